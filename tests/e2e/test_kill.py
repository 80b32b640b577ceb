"""A city instance killed (SIGKILL) in the middle of a stream of batches loses nothing, duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lifeline.kit.natsserver import free_port

LIFELINE = Path(sys.executable).parent / "lifeline"
REGION = "340300"  # its own durable consumers and subjects on the worker's nats-server
SENSORS = [f"BB-CH4-{i}" for i in range(8)]


def write_sensors(path: Path) -> None:
    rows = ["sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status"]
    rows += [f"{s},gas.ch4,%LEL,340302,34030211020000{i:02d},60,32.9,117.3,active" for i, s in enumerate(SENSORS)]
    path.write_text("\n".join(rows) + "\n")


def stored(db: Path) -> list[tuple[str, int, float]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute(
                "SELECT k.sensor_id, r.device_time_ms, r.value FROM readings r JOIN sensor_keys k USING (sensor_key)"
            ).fetchall()
        except sqlite3.OperationalError:
            return []


@pytest.mark.slow
async def test_sigkill_mid_stream_loses_and_duplicates_nothing(nats_server, oidc_provider, token_factory, tmp_path):
    if not nats_server.running:
        nats_server.start()
    sensors = tmp_path / "sensors.csv"
    write_sensors(sensors)
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_REGION": REGION,
            "LIFELINE_NATS_URL": nats_server.url,
            "LIFELINE_OIDC_ISSUER": oidc_provider.issuer,
            "LIFELINE_DATA_DIR": str(tmp_path / "data"),
            "LIFELINE_INGEST_HTTP_PORT": str(http_port),
            "LIFELINE_INGEST_GRPC_PORT": str(free_port()),
            "LIFELINE_INGEST_SENSORS_FILE": str(sensors),
            "LIFELINE_LOG_JSON": "false",
        }
    )
    log = (tmp_path / "lifeline.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(LIFELINE), "run", "--services", "ingest"], env=env, stdout=log, stderr=log)

    token = await token_factory.client(roles=["service"], region="340000")
    base = f"http://127.0.0.1:{http_port}"
    proc = start()
    t0 = int(time.time() * 1000) - 3_600_000
    batches = [
        [
            {"sensor_id": s, "device_time_ms": t0 + b * 1000 + i, "value": (b % 50) / 10}
            for s in SENSORS
            for i in range(10)
        ]
        for b in range(60)
    ]
    kills = 0
    try:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=5) as c:
            for b, batch in enumerate(batches):
                if b in (15, 40):
                    # Mid-stream: the previous batch was just acknowledged and is on its way to storage.
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    proc = start()
                deadline = time.monotonic() + 60
                while True:
                    try:
                        r = await c.post("/v1/readings", json={"readings": batch})
                        if r.status_code == 200:
                            body = r.json()
                            # Accepted now or earlier (a retry of a batch whose answer was lost).
                            assert body["rejected"] == 0, body
                            break
                        assert r.status_code == 503, r.text
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "instance did not come back"
                    await asyncio.sleep(0.2)
        expected = sorted((r["sensor_id"], r["device_time_ms"], r["value"]) for b in batches for r in b)
        db = tmp_path / "data" / "ingest.db"
        deadline = time.monotonic() + 60
        while len(stored(db)) < len(expected) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling another process's file
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.0)  # anything redelivered twice would show up now
        assert kills == 2
        assert sorted(stored(db)) == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
