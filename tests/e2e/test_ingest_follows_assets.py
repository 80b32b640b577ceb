"""A city instance (``lifeline run`` of assets and ingest, in one process and one process per service):
a sensor registered in assets is accepted by ingest within seconds, and refused once retired — the
launcher tells ingest where assets listens, ingest reads assets with the instance's service account."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import httpx
import pytest

from lifeline.kit.natsserver import free_port

LIFELINE = Path(sys.executable).parent / "lifeline"
REGION = "340200"  # Wuhu: subjects and data of its own on the worker's nats-server


async def wait_ready(c: httpx.AsyncClient, url: str, proc: asyncio.subprocess.Process, within: float) -> None:
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"lifeline exited with {proc.returncode}"
        try:
            r = await c.get(url)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.TransportError as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready within {within}s: {last}")


async def outcome(c: httpx.AsyncClient, ingest: str, sensor_id: str) -> str:
    reading = {"sensor_id": sensor_id, "device_time_ms": time.time_ns() // 1_000_000, "value": 1.0, "unit": "%LEL"}
    r = await c.post(f"{ingest}/v1/readings", json={"readings": [reading]})
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    return str(result.get("reason") or result["status"])


async def eventually(c: httpx.AsyncClient, ingest: str, sensor_id: str, want: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (got := await outcome(c, ingest, sensor_id)) != want:
        assert time.monotonic() < deadline, f"{sensor_id}: still {got!r}, not {want!r}, after {within}s"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single-process", "processes"])
async def test_sensor_registered_in_assets_is_accepted_by_ingest_and_refused_once_retired(
    mode: str, nats_server, oidc_provider, token_factory, tmp_path: Path
) -> None:
    if not nats_server.running:
        nats_server.start()
    account = await oidc_provider.register_client(
        f"services-{REGION}-{secrets.token_hex(3)}", roles=["service"], region=REGION
    )
    ports = {name: free_port() for name in ("ingest_http", "ingest_grpc", "assets_http", "assets_grpc")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_REGION": REGION,
            "LIFELINE_NATS_URL": nats_server.url,
            "LIFELINE_OIDC_ISSUER": oidc_provider.issuer,
            "LIFELINE_OIDC_CLIENT_ID": account["client_id"],
            "LIFELINE_OIDC_CLIENT_SECRET": account["client_secret"],
            "LIFELINE_DATA_DIR": str(tmp_path / "data"),
            # Ports nobody guesses: ingest learns the assets address from the launcher, not a default.
            "LIFELINE_INGEST_HTTP_PORT": str(ports["ingest_http"]),
            "LIFELINE_INGEST_GRPC_PORT": str(ports["ingest_grpc"]),
            "LIFELINE_ASSETS_HTTP_PORT": str(ports["assets_http"]),
            "LIFELINE_ASSETS_GRPC_PORT": str(ports["assets_grpc"]),
            "LIFELINE_LOG_JSON": "false",
        }
    )
    argv = [str(LIFELINE), "run", "--services", "assets,ingest"] + (["--processes"] if mode == "processes" else [])
    log = (tmp_path / "lifeline.log").open("ab")
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
    ingest = f"http://127.0.0.1:{ports['ingest_http']}"
    assets = f"http://127.0.0.1:{ports['assets_http']}"
    token = await token_factory.client(roles=["service"], region=REGION)
    serial = f"{secrets.randbelow(10**6):06d}"
    code, sensor_id = f"3402021102{serial}", f"WH-GAS-CH4-{serial}"
    try:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
            # Ingest's readiness includes the registry: the census on the bus is read. It does not wait
            # for assets itself (a census marked complete earlier is enough), so assets is asked too.
            await wait_ready(c, f"{ingest}/readyz", proc, within=60)
            await wait_ready(c, f"{assets}/readyz", proc, within=60)
            assert await outcome(c, ingest, sensor_id) == "unknown_sensor"
            facility = {
                "code": code,
                "kind": "gas",
                "name": "银湖路燃气管段",
                "geometry": {"type": "Point", "coordinates": [118.38, 31.33]},
            }
            assert (await c.post(f"{assets}/v1/facilities", json=facility)).status_code == 201
            sensor = {"sensor_id": sensor_id, "facility_code": code, "quantity": "gas.ch4"}
            assert (await c.post(f"{assets}/v1/sensors", json=sensor)).status_code == 201
            await eventually(c, ingest, sensor_id, "accepted")
            assert (await c.post(f"{assets}/v1/sensors/{sensor_id}/retire")).status_code == 200
            await eventually(c, ingest, sensor_id, "sensor_retired")
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
