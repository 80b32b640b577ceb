"""Ingest throughput and memory, each figure next to the limit it is compared with (see bench/README.md).

``python -m bench.ingest [--quick] [--backend sqlite|postgres|all] [--server auto|lifeline|bench]
[--profile DIR] [--keep]`` runs it. The server child is ``lifeline run --services ingest`` when the
launcher has its CLI, else (and always when profiling) ``python -m bench.ingest serve``, which builds
the service the same way from the environment, prints ``READY <http url> <grpc address>`` and stops
cleanly on SIGTERM.

Per database backend (SQLite always, PostgreSQL when the server is reachable):

1. Limits, measured first, on this machine: the raw JetStream publish rate of the very payload the
   front door publishes (a ReadingsAccepted protobuf of 500 readings, ``js.publish_async``; and of one
   reading, concurrent ``js.publish`` that each wait for their ack, as one request does), on a
   nats-server of its own; and the raw insert rate of the same rows into the ingest schema (SQLite
   ``executemany`` with the sqlite3 module; PostgreSQL ``COPY`` with asyncpg ``copy_records_to_table``).
2. End to end, with the ingest service in a separate process: batches of 500 over REST and one-reading
   REST requests (a lean keep-alive HTTP/1.1 client: httpx cost the load generator half a core), and
   batches over gRPC (IngestBatch, concurrent). Each scenario sends for a fixed time, then waits until the
   ``readings`` table holds everything that was accepted; readings/s = accepted / (that moment - the
   first request).
3. Peak RSS of the ingest process and of nats-server (psutil samples; the kernel's VmHWM as a check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import math
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench.common import (
    MB,
    BenchError,
    BenchIdp,
    CpuMeter,
    RawHttpConnection,
    Row,
    RssSampler,
    asyncpg_to_sqlalchemy,
    child_env,
    fresh_pg_database,
    log,
    pg_admin_dsn,
    pg_reachable,
    render_table,
    run_async,
    stop_process,
    vm_hwm_bytes,
    wait_for_line,
)

REGION = "340100"
# gRPC batch requests prepared before their scenario: enough for this many readings/s (more are built as sent).
PREPARED_RATE = 160_000
# MQTT devices of the MQTT scenario, each with a chunk of 32 one-reading messages in flight.
MQTT_DEVICES = 8
COUNTY = "340104"
UNIT = "%LEL"
BATCH = 500
# Goals from the issue.
GOAL_BATCHED = 100_000.0
GOAL_SINGLE = 5_000.0
GOAL_INGEST_RSS_MB = 100.0
GOAL_NATS_RSS_MB = 256.0
# Rows per transaction in the raw insert limit (what the persisting consumer commits at once is 1 to
# consumer_batch messages of 500 readings; 20 messages is in between).
LIMIT_TXN_ROWS = 20 * BATCH
# Storing has stalled (and the bench fails) when the readings table gains no row for this long.
STALL_S = 20.0


@dataclass(frozen=True)
class Plan:
    """How long each part runs (seconds) and how hard it pushes."""

    sensors: int = 2000
    js_batch_s: float = 2.0
    js_single_s: float = 2.0
    db_s: float = 2.0
    # Sending time of each scenario; the wait for storage to catch up comes on top.
    rest_batch_s: float = 8.0
    grpc_batch_s: float = 8.0
    rest_single_s: float = 6.0
    batch_clients: int = 4  # x batch_in_flight = keep-alive connections for REST batches
    batch_in_flight: int = 2
    grpc_in_flight: int = 8
    single_connections: int = 32  # one request in flight on each
    drain_timeout_s: float = 90.0


FULL = Plan()
QUICK = Plan(
    js_batch_s=1.0,
    js_single_s=1.0,
    db_s=1.0,
    rest_batch_s=3.0,
    grpc_batch_s=3.0,
    rest_single_s=2.5,
    drain_timeout_s=60.0,
)


# --- synthetic sensors and readings ------------------------------------------------------------------


def sensor_ids(n: int) -> list[str]:
    return [f"BENCH-CH4-{i:05d}" for i in range(n)]


def write_sensors_csv(path: Path, n: int) -> None:
    """A registry of `n` methane sensors in county 340104, in the launcher's sample CSV format."""
    lines = ["sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status,range_min,range_max,note"]
    for i, sid in enumerate(sensor_ids(n)):
        lat = 31.80 + (i % 100) * 0.001
        lon = 117.20 + (i // 100) * 0.001
        lines.append(f"{sid},gas.ch4,{UNIT},{COUNTY},3401041102{i:06d},60,{lat:.6f},{lon:.6f},active,,,bench well {i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class Clock:
    """Readings in device-time order: every sensor once per round, rounds 60 s apart, from 3 days ago.

    Every reading ever taken is new (sensor, device time), so each one must be accepted and stored.
    """

    def __init__(self, ids: list[str], step_ms: int = 60_000) -> None:
        self.ids = ids
        self.step_ms = step_ms
        self.start_ms = (time.time_ns() // 1_000_000) - 3 * 86_400_000
        self.i = 0
        self.k = 0

    def take(self, count: int) -> list[tuple[str, int, float]]:
        out = []
        ids, n = self.ids, len(self.ids)
        for _ in range(count):
            out.append((ids[self.i], self.start_ms + self.k * self.step_ms, float((self.i * 7 + self.k) % 200) * 0.25))
            self.i += 1
            if self.i == n:
                self.i = 0
                self.k += 1
        if self.start_ms + self.k * self.step_ms > time.time_ns() // 1_000_000:
            raise BenchError("the synthetic clock ran into the future; use fewer readings or more sensors")
        return out


_json = msgspec.json.Encoder()


def json_body(readings: list[tuple[str, int, float]]) -> bytes:
    return _json.encode(
        {"readings": [{"sensor_id": s, "device_time_ms": t, "value": v, "unit": UNIT} for s, t, v in readings]}
    )


def accepted_payload(readings: list[tuple[str, int, float]]) -> bytes:
    """What the front door publishes for these readings: a ReadingsAccepted protobuf."""
    from lifeline.kit.readings import message_from_rows
    from lifeline.v1 import common_pb2

    good = common_pb2.QUALITY_GOOD
    rows = [(s, t, v, UNIT, good) for s, t, v in readings]
    return message_from_rows(REGION, rows, time.time_ns() // 1_000_000).SerializeToString()


def rows_of(readings: list[tuple[str, int, float]], received_ms: int, key_of: dict[str, int]) -> list[tuple[Any, ...]]:
    """The readings as rows of the ``readings`` table (column order of READING_COLUMNS)."""
    return [(key_of[s], t, v, UNIT, 1, received_ms, REGION) for s, t, v in readings]


READING_COLUMNS = ("sensor_key", "device_time_ms", "value", "unit", "quality", "received_ms", "region")


# --- limits ------------------------------------------------------------------------------------------


async def js_limits(work: Path, clock: Clock, plan: Plan) -> tuple[float, float, float]:
    """Raw JetStream rates in readings/s on a nats-server of its own (file store, same stream limits).

    Returns (batches of 500 with publish_async, one reading with publish_async, one reading with
    concurrent publish each awaiting its ack like a one-reading request does).
    """
    import nats

    from lifeline.kit.bus import STREAMS, StreamSpec
    from lifeline.kit.natsserver import NatsServer

    readings_spec = next(s for s in STREAMS if s.name == "READINGS")
    spec = StreamSpec(
        "BENCHLIMIT",
        ("benchlimit.>",),
        max_age_s=readings_spec.max_age_s,
        max_bytes=readings_spec.max_bytes,
        duplicate_window_s=readings_spec.duplicate_window_s,
    )
    server = NatsServer(store_dir=work / "nats-limits")
    server.start()
    try:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(spec.config())
            subject = f"benchlimit.{REGION}"

            async def run_async(size: int, seconds: float) -> float:
                # Payloads are built before the clock starts; one per publish (distinct msg ids and content).
                pool = [accepted_payload(clock.take(size)) for _ in range(64)]
                n = 0
                t0 = time.perf_counter()
                stop = t0 + seconds
                while time.perf_counter() < stop:
                    for payload in pool:
                        await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"lim:{secrets.token_hex(8)}"})
                    n += len(pool)
                await js.publish_async_completed()
                elapsed = time.perf_counter() - t0
                return n * size / elapsed

            async def run_concurrent(seconds: float, workers: int) -> float:
                payload_pool = [accepted_payload(clock.take(1)) for _ in range(256)]
                count = 0
                stop = time.perf_counter() + seconds

                async def worker(w: int) -> None:
                    nonlocal count
                    i = w
                    while time.perf_counter() < stop:
                        await js.publish(
                            subject,
                            payload_pool[i % len(payload_pool)],
                            headers={"Nats-Msg-Id": f"lim1:{secrets.token_hex(8)}"},
                        )
                        count += 1
                        i += workers

                t0 = time.perf_counter()
                await asyncio.gather(*(worker(w) for w in range(workers)))
                return count / (time.perf_counter() - t0)

            batch_rate = await run_async(BATCH, plan.js_batch_s)
            single_async = await run_async(1, plan.js_single_s / 2)
            single_acked = await run_concurrent(plan.js_single_s / 2, plan.single_connections)
            await js.delete_stream(spec.name)
        finally:
            await nc.close()
    finally:
        server.stop()
    return batch_rate, single_async, single_acked


async def migrate_ingest_schema(sqlalchemy_url: str) -> None:
    from lifeline.ingest.app import IngestApp
    from lifeline.kit.migrations import migrate

    assert IngestApp.migrations is not None
    await migrate(sqlalchemy_url, IngestApp.migrations)


async def sqlite_insert_limit(path: Path, clock: Clock, seconds: float) -> float:
    """Rows/s of sqlite3 executemany into the ingest schema (WAL, synchronous=NORMAL like kit.db)."""
    await migrate_ingest_schema(f"sqlite+aiosqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executemany("INSERT INTO sensor_keys (sensor_id) VALUES (?)", [(sid,) for sid in clock.ids])
        key_of = dict(conn.execute("SELECT sensor_id, sensor_key FROM sensor_keys").fetchall())
        sql = f"INSERT INTO readings ({', '.join(READING_COLUMNS)}) VALUES ({', '.join('?' * len(READING_COLUMNS))})"
        rows_done, busy = 0, 0.0
        while busy < seconds:
            rows = rows_of(clock.take(LIMIT_TXN_ROWS), time.time_ns() // 1_000_000, key_of)
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            busy += time.perf_counter() - t0
            rows_done += len(rows)
    finally:
        conn.close()
    return rows_done / busy


async def pg_copy_limit(dsn: str, clock: Clock, seconds: float) -> float:
    """Rows/s of asyncpg COPY (copy_records_to_table) into the ingest schema, one transaction per chunk."""
    import asyncpg

    await migrate_ingest_schema(asyncpg_to_sqlalchemy(dsn))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany("INSERT INTO sensor_keys (sensor_id) VALUES ($1)", [(sid,) for sid in clock.ids])
        key_of = dict(await conn.fetch("SELECT sensor_id, sensor_key FROM sensor_keys"))
        rows_done, busy = 0, 0.0
        while busy < seconds:
            rows = rows_of(clock.take(LIMIT_TXN_ROWS), time.time_ns() // 1_000_000, key_of)
            t0 = time.perf_counter()
            await conn.copy_records_to_table("readings", records=rows, columns=list(READING_COLUMNS))
            busy += time.perf_counter() - t0
            rows_done += len(rows)
    finally:
        await conn.close()
    return rows_done / busy


# --- the server child --------------------------------------------------------------------------------


class ThreadProfiles:
    """cProfile for the main thread and every thread started after it (aiosqlite runs SQL in one)."""

    def __init__(self) -> None:
        self.main = cProfile.Profile()
        self.others: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        prof = cProfile.Profile()
        with self._lock:
            self.others.append(prof)
        prof.enable()  # replaces this hook as the thread's profile function

    def start_threads(self) -> None:
        """Profile every thread started from now on (call before the service opens its connections)."""
        threading.setprofile(self._hook)

    def start_main(self) -> None:
        self.main.enable()

    def dump(self, path: Path) -> None:
        import pstats

        self.main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        self.main.dump_stats(str(path))
        with self._lock:
            others = list(self.others)
        merged: pstats.Stats | None = None
        for prof in others:
            prof.create_stats()
            if not prof.stats:  # type: ignore[attr-defined]
                continue  # a thread that ended before it called anything
            if merged is None:
                merged = pstats.Stats(prof)
            else:
                merged.add(prof)  # type: ignore[arg-type]
        if merged is not None:
            merged.dump_stats(str(path.with_suffix(".threads.prof")))


async def serve(profile: Path | None) -> int:
    """Run one ingest service from the environment until SIGTERM (what `lifeline run` would do)."""
    from lifeline.ingest.app import IngestApp
    from lifeline.ingest.settings import IngestSettings
    from lifeline.kit.auth import TokenVerifier
    from lifeline.kit.bus import Bus
    from lifeline.kit.config import InstanceSettings
    from lifeline.kit.telemetry import setup_telemetry

    instance = InstanceSettings()
    settings = IngestSettings()
    setup_telemetry(instance)
    bus = Bus(instance.nats_url, name="bench-ingest", user=instance.nats_user, password=instance.nats_password)
    await bus.start()
    await bus.wait_ready(15)
    verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)
    app = IngestApp(instance=instance, settings=settings, bus=bus, verifier=verifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    profiles = ThreadProfiles() if profile else None
    if profiles:
        profiles.start_threads()
    await app.start()
    try:
        assert app.http is not None and app.grpc is not None
        print(f"READY {app.http.url} {app.grpc.address}", flush=True)
        if profiles:
            profiles.start_main()
        await stop.wait()
        if profiles and profile:
            profiles.dump(profile)
    finally:
        await app.stop()
        await bus.close()
        await verifier.aclose()
    return 0


@dataclass
class ServerChild:
    proc: subprocess.Popen[bytes]
    http_url: str
    grpc_address: str
    log_path: Path
    how: str

    def errors(self, last: int = 6) -> str:
        """The last error lines of the server's log (JSON lines at level ERROR, tracebacks)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        hits = [ln for ln in lines if '"level": "ERROR"' in ln or ln.startswith(("Traceback", "  File", "    "))]
        return "\n".join(ln[:400] for ln in hits[-last:])

    def stop(self) -> None:
        rc = stop_process(self.proc, 30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if rc != 0:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"the ingest server ({self.how}) exited with {rc}; log {self.log_path}:\n{tail}")


def lifeline_cli_available() -> bool:
    """Whether the launcher's ``lifeline run`` exists in this checkout."""
    import importlib.util

    try:
        return importlib.util.find_spec("lifeline.launcher.cli") is not None
    except ImportError:
        return False


def start_server(
    work: Path,
    env: dict[str, str],
    profile: Path | None,
    server: str,
    roles: str = "front,storage",
    *,
    ports: tuple[int, int] | None = None,
    name: str = "",
) -> ServerChild:
    """The ingest service in a child process: ``lifeline run --services ingest`` or ``bench.ingest serve``.

    `server` is "lifeline", "bench" or "auto" (lifeline when the launcher has its CLI, except when
    profiling: only the bench's own child profiles every thread). `ports` (HTTP, gRPC): ports another
    front process already serves on with ``LIFELINE_INGEST_REUSE_PORT`` (lifeline only): this one joins
    them, and is ready when it says so in its log (a request to the shared port may reach the other).
    """
    if server == "auto":
        server = "bench" if profile or not lifeline_cli_available() else "lifeline"
    env = {**env, "LIFELINE_INGEST_ROLES": roles}
    log_path = work / f"ingest-{name or roles.replace(',', '-')}.log"
    if server == "bench":
        cmd = [sys.executable, "-m", "bench.ingest", "serve"]
        if profile:
            cmd += ["--profile", str(profile)]
        with log_path.open("wb") as logf:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                env=child_env({**env, "LIFELINE_INGEST_HTTP_PORT": "0", "LIFELINE_INGEST_GRPC_PORT": "0"}),
                cwd=work,
            )
        line = wait_for_line(proc, "READY ", 90, log_path)
        _, http_url, grpc_address = line.split()
        return ServerChild(proc, http_url, grpc_address, log_path, "python -m bench.ingest serve")
    if profile:
        raise BenchError("--profile needs the bench's own server child (--server bench or auto)")
    from lifeline.kit.natsserver import free_port

    http_port, grpc_port = ports or (free_port(), free_port())
    cmd = [
        sys.executable,
        "-m",
        "lifeline.launcher.cli",
        "run",
        "--tier",
        "city",
        "--region",
        REGION,
        "--services",
        "ingest",
    ]
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(
                {**env, "LIFELINE_INGEST_HTTP_PORT": str(http_port), "LIFELINE_INGEST_GRPC_PORT": str(grpc_port)}
            ),
            cwd=work,
        )
    child = ServerChild(
        proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log_path, f"lifeline run, roles {roles}"
    )
    deadline = time.monotonic() + 90
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ports is not None:
            if '"instance running"' in log_path.read_text(errors="replace"):
                return child
            last = "no 'instance running' in its log yet"
            time.sleep(0.2)
            continue
        try:
            resp = httpx.get(f"{child.http_url}/readyz", timeout=2)
            if resp.status_code == 200:
                return child
            last = f"{resp.status_code} {resp.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    stop_process(proc)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise BenchError(f"`lifeline run --services ingest` did not become ready (last /readyz: {last})\n{tail}")


# --- load ----------------------------------------------------------------------------------------------

Sender = Callable[[], Awaitable[int]]  # sends one request, returns how many readings it carried (all accepted)


@dataclass
class LoadResult:
    accepted: int = 0
    requests: int = 0
    t_first: float = 0.0
    t_last_reply: float = 0.0
    t_stored: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: str = ""
    # CPU time of each of our processes per accepted reading, in µs: steadier than rates on a shared machine.
    cpu_us: dict[str, float] = field(default_factory=dict)
    rss_peak: dict[str, int] = field(default_factory=dict)

    @property
    def e2e_rate(self) -> float:
        return self.accepted / (self.t_stored - self.t_first)

    @property
    def acked_rate(self) -> float:
        return self.accepted / (self.t_last_reply - self.t_first)

    def cpu_per_reading(self) -> str:
        return ", ".join(f"{n} {us:.1f} µs" for n, us in self.cpu_us.items())

    def describe(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
        rss = ", ".join(f"{n} {v / MB:.0f} MB" for n, v in sorted(self.rss_peak.items()))
        return (
            f"{self.accepted:,} readings in {self.requests:,} requests: acknowledged {self.acked_rate:,.0f}/s, "
            f"stored {self.e2e_rate:,.0f}/s (last row {self.t_stored - self.t_last_reply:.2f} s after the last "
            f"reply); latency p50 {p50:.1f} ms, p99 {p99:.1f} ms\n    CPU: {self.cpu}\n"
            f"    CPU per reading: {self.cpu_per_reading()}\n"
            f"    peak RSS: {rss}"
        )


async def run_load(
    name: str,
    senders: list[Sender],
    seconds: float,
    count: Callable[[], Awaitable[int]],
    drain_timeout_s: float,
    cpu_pids: dict[str, int],
    sampler: RssSampler,
) -> LoadResult:
    """Run the senders concurrently for `seconds`, then wait until the table holds every accepted reading."""
    res = LoadResult()
    base = await count()
    sampler.next_phase()

    async def loop(send: Sender) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            if not res.t_first:
                res.t_first = t0
            n = await send()
            t1 = time.perf_counter()
            res.latencies.append(t1 - t0)
            res.accepted += n
            res.requests += 1
            res.t_last_reply = max(res.t_last_reply, t1)

    with CpuMeter(cpu_pids) as cpu:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(loop(s) for s in senders))
        target = base + res.accepted
        deadline = time.perf_counter() + drain_timeout_s
        last_n, last_progress = -1, time.perf_counter()
        while True:
            n = await count()
            now = time.perf_counter()
            if n >= target:
                res.t_stored = now
                break
            if n != last_n:
                last_n, last_progress = n, now
            stalled = now - last_progress > STALL_S
            if now > deadline or stalled:
                why = f"no new row for {STALL_S:.0f} s" if stalled else f"{drain_timeout_s:.0f} s after the last reply"
                raise BenchError(f"{name}: only {n - base:,} of {res.accepted:,} accepted readings stored ({why})")
            await asyncio.sleep(0.02)
    if n != target:
        raise BenchError(f"{name}: the readings table has {n - base:,} new rows, expected {res.accepted:,}")
    res.cpu = cpu.summary()
    res.cpu_us = (
        {n: pct / 100 * cpu.wall / res.accepted * 1e6 for n, pct in cpu.percent.items()} if res.accepted else {}
    )
    res.rss_peak = sampler.next_phase()
    return res


def check_rest_reply(status: int, body: bytes, size: int) -> int:
    if status != 200:
        raise BenchError(f"POST /v1/readings answered {status}: {body[:500]!r}")
    doc = msgspec.json.decode(body)
    if doc["accepted"] != size:
        bad = [r for r in doc["results"] if r["status"] != "accepted"][:3]
        raise BenchError(f"POST /v1/readings accepted {doc['accepted']} of {size}: {bad}")
    return size


def httpx_senders(clients: list[httpx.AsyncClient], clock: Clock, size: int, in_flight: int) -> list[Sender]:
    def make(client: httpx.AsyncClient) -> Sender:
        async def send() -> int:
            body = json_body(clock.take(size))
            resp = await client.post("/v1/readings", content=body, headers={"content-type": "application/json"})
            return check_rest_reply(resp.status_code, resp.content, size)

        return send

    return [make(c) for c in clients for _ in range(in_flight)]


def raw_senders(conns: list[RawHttpConnection], clock: Clock, size: int) -> list[Sender]:
    def make(conn: RawHttpConnection) -> Sender:
        async def send() -> int:
            status, body = await conn.request("POST", "/v1/readings", json_body(clock.take(size)))
            return check_rest_reply(status, body, size)

        return send

    return [make(c) for c in conns]


class MqttDevices:
    """Devices publishing one reading per MQTT message (QoS 1) to nats-server's MQTT listener.

    paho-mqtt clients, each with its network thread; a sender publishes a chunk of messages and returns
    when the listener acknowledged them all (PUBACK: stored in the DEVICES stream), so each device keeps
    up to `chunk` messages in flight. Bodies for up to PREPARED_RATE / 10 messages a second are encoded
    before the scenario (more are encoded as they are sent).
    """

    def __init__(self, port: int, devices: int, clock: Clock, prepared: int, chunk: int = 32) -> None:
        from collections import deque

        import paho.mqtt.client as mqtt

        self.clock = clock
        self.chunk = chunk
        self.bodies = deque(json_body(clock.take(1)) for _ in range(prepared))
        self.clients: list[Any] = []
        for i in range(devices):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-device-{i}", clean_session=True)
            client.max_inflight_messages_set(chunk)
            client.connect("127.0.0.1", port)
            client.loop_start()
            self.clients.append(client)

    def senders(self) -> list[Sender]:
        def make(client: Any, topic: str) -> Sender:
            def publish_chunk() -> int:
                infos = []
                for _ in range(self.chunk):
                    body = self.bodies.popleft() if self.bodies else json_body(self.clock.take(1))
                    infos.append(client.publish(topic, body, qos=1))
                for info in infos:
                    info.wait_for_publish(timeout=30)
                    if not info.is_published():
                        raise BenchError(f"MQTT publish to {topic} not acknowledged within 30 s (rc {info.rc})")
                return self.chunk

            async def send() -> int:
                return await asyncio.to_thread(publish_chunk)

            return send

        return [make(c, f"devices/{REGION}/bench-device-{i}/readings") for i, c in enumerate(self.clients)]

    def close(self) -> None:
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def grpc_senders(channel: Any, token: str, clock: Clock, in_flight: int, prebuilt: int = 0) -> list[Sender]:
    """IngestBatch senders; the first `prebuilt` requests are serialised before the scenario starts.

    Building a request of 500 ``Reading`` submessages costs the client ~1 µs a reading on this machine
    (a third of what the service spends on it, on the same two cores): requests built ahead of the
    measured window leave that out, the way a load generator replays prepared requests. Requests beyond
    them are built as they are sent (correct, only dearer). Unused ones just skip device times.
    """
    from collections import deque

    from lifeline.v1 import common_pb2, telemetry_pb2

    metadata = (("authorization", f"Bearer {token}"),)
    good = common_pb2.QUALITY_GOOD
    # The generated stub's method, but sending bytes as they are (no serializer).
    ingest_batch = channel.unary_unary(
        "/lifeline.v1.TelemetryIngest/IngestBatch",
        request_serializer=None,
        response_deserializer=telemetry_pb2.IngestBatchResponse.FromString,
    )

    def build() -> bytes:
        req = telemetry_pb2.IngestBatchRequest()
        add = req.readings.add
        for s, t, v in clock.take(BATCH):
            add(sensor_id=s, device_time_ms=t, value=v, unit=UNIT, quality=good)
        return req.SerializeToString()

    ready = deque(build() for _ in range(prebuilt))

    async def send() -> int:
        body = ready.popleft() if ready else build()
        resp = await ingest_batch(body, metadata=metadata, timeout=60)
        if resp.accepted != BATCH:
            bad = [r for r in resp.results if r.status != telemetry_pb2.READING_STATUS_ACCEPTED][:3]
            raise BenchError(f"IngestBatch accepted {resp.accepted} of {BATCH}: {bad}")
        return BATCH

    return [send] * in_flight


# --- one backend ---------------------------------------------------------------------------------------


@dataclass
class Ctx:
    work: Path
    plan: Plan
    idp: BenchIdp
    token: str
    sensors_file: Path
    clock: Clock
    profile_dir: Path | None
    server: str
    layout: str = "split"


async def bench_backend(backend: str, ctx: Ctx, pg_dsn: str | None) -> list[Row]:
    import grpc

    from lifeline.kit.natsserver import NatsServer

    plan, clock = ctx.plan, ctx.clock
    tag = "SQLite" if backend == "sqlite" else "PostgreSQL"
    work = ctx.work / backend
    work.mkdir(parents=True, exist_ok=True)
    single_conc = plan.single_connections

    log(f"[{tag}] limits: JetStream publish rates")
    js_batch, js_single_async, js_single_acked = await js_limits(work, clock, plan)
    log(
        f"[{tag}]   ReadingsAccepted of {BATCH} with publish_async: {js_batch:,.0f} readings/s; of one reading: "
        f"publish_async {js_single_async:,.0f}/s, {single_conc} concurrent publish+ack {js_single_acked:,.0f}/s"
    )

    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            db_limit = await sqlite_insert_limit(work / "limit.db", clock, plan.db_s)
            db_limit_name = "SQLite executemany"
            db_path = work / "ingest.db"
            db_url = f"sqlite+aiosqlite:///{db_path}"

            async def count() -> int:
                conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
                try:
                    return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
                finally:
                    conn.close()
        else:
            import asyncpg

            assert pg_dsn is not None
            limit_dsn = await stack.enter_async_context(fresh_pg_database(pg_dsn))
            db_limit = await pg_copy_limit(limit_dsn, clock, plan.db_s)
            db_limit_name = "PostgreSQL COPY"
            dsn = await stack.enter_async_context(fresh_pg_database(pg_dsn))
            db_url = asyncpg_to_sqlalchemy(dsn)
            pg = await asyncpg.connect(dsn)
            stack.push_async_callback(pg.close)

            async def count() -> int:
                return int(await pg.fetchval("SELECT count(*) FROM readings"))

        log(
            f"[{tag}]   {db_limit_name} into the ingest schema, {LIMIT_TXN_ROWS:,} rows per transaction: "
            f"{db_limit:,.0f} rows/s"
        )

        nats = NatsServer(store_dir=work / "nats")
        nats.start()
        stack.callback(nats.stop)
        assert nats.pid is not None
        sampler = RssSampler().start()
        stack.callback(sampler.stop)
        sampler.watch("nats-server", nats.pid)

        profile = ctx.profile_dir / f"ingest-{backend}.prof" if ctx.profile_dir else None
        env = {
            "LIFELINE_REGION": REGION,
            "LIFELINE_DATA_DIR": str(work),
            "LIFELINE_NATS_URL": nats.url,
            "LIFELINE_OIDC_ISSUER": ctx.idp.issuer,
            "LIFELINE_INGEST_DATABASE_URL": db_url,
            "LIFELINE_INGEST_SENSORS_FILE": str(ctx.sensors_file),
        }
        t0 = time.perf_counter()
        split = ctx.layout == "split" and not profile
        # Scenario 4 adds a second front door on the same ports: every front must allow sharing them.
        two_fronts = split and ctx.server != "bench"
        if two_fronts:
            env["LIFELINE_INGEST_REUSE_PORT"] = "true"
        server = start_server(work, env, profile, ctx.server, "front" if split else "front,storage")
        storage = start_server(work, env, None, ctx.server, "storage") if split else None
        stopped = False

        def kill_server() -> None:
            if not stopped:
                stop_process(server.proc, 10)
                if storage is not None:
                    stop_process(storage.proc, 10)

        stack.callback(kill_server)
        sampler.watch("ingest", server.proc.pid)
        if storage is not None:
            sampler.watch("ingest-storage", storage.proc.pid)
        ready_rss = sampler.current("ingest")
        storage_ready_rss = sampler.current("ingest-storage") if storage is not None else 0
        log(
            f"[{tag}] ingest server ({server.how}, {db_url.split(':')[0]}) ready in {time.perf_counter() - t0:.1f} s, "
            f"RSS {ready_rss / MB:.0f} MB" + (f", storage process {storage_ready_rss / MB:.0f} MB" if storage else "")
        )
        pids = {"ingest": server.proc.pid, "nats": nats.pid, "bench": os.getpid()}
        if storage is not None:
            pids["storage"] = storage.proc.pid
        headers = {"Authorization": f"Bearer {ctx.token}"}
        results: dict[str, LoadResult] = {}

        async def load(key: str, name: str, senders: list[Sender], seconds: float) -> None:
            try:
                r = results[key] = await run_load(name, senders, seconds, count, plan.drain_timeout_s, pids, sampler)
            except BenchError as exc:
                raise BenchError(f"[{tag}] {exc}\nlast errors in {server.log_path}:\n{server.errors()}") from exc
            except Exception as exc:
                # A request that failed at the transport level: the server may have said why.
                raise BenchError(
                    f"[{tag}] {name}: {exc!r}\nlast errors in {server.log_path}:\n{server.errors()}"
                ) from exc
            log(f"[{tag}]   {r.describe()}")

        # Warm-up, outside every measured window: the first requests fetch the issuer's signing keys,
        # import what was imported lazily and open connections (a second of CPU, which the first
        # scenario would otherwise be charged with). Waits until storage holds them too.
        async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=60) as warm:
            warm_channel = grpc.aio.insecure_channel(server.grpc_address)
            try:
                warm_base = await count()
                warmed = await httpx_senders([warm], clock, BATCH, 1)[0]()
                warmed += await grpc_senders(warm_channel, ctx.token, clock, 1)[0]()
                warmed += await httpx_senders([warm], clock, 1, 1)[0]()
            finally:
                await warm_channel.close()
        deadline = time.perf_counter() + plan.drain_timeout_s
        while await count() < warm_base + warmed:
            if time.perf_counter() > deadline:
                raise BenchError(f"[{tag}] warm-up: {warmed} readings not stored in {plan.drain_timeout_s:.0f} s")
            await asyncio.sleep(0.05)

        # 1. Batches of 500 over REST: keep-alive connections, one request in flight on each. The lean client
        # of the one-reading scenario: httpx took ~4 ms of CPU per request here (8 µs per reading, ~half a
        # core of the two the service runs on), so the load generator measured itself.
        batch_conns = plan.batch_clients * plan.batch_in_flight
        log(f"[{tag}] REST batches of {BATCH}: {batch_conns} connections, {plan.rest_batch_s:g} s")
        host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
        batch_raw = [RawHttpConnection(host, int(port), headers) for _ in range(batch_conns)]
        for conn in batch_raw:
            stack.push_async_callback(conn.close)
        await load("rest_batch", "REST batches", raw_senders(batch_raw, clock, BATCH), plan.rest_batch_s)

        # 2. Batches of 500 over gRPC IngestBatch, requests for up to PREPARED_RATE prepared beforehand.
        prepared = math.ceil(PREPARED_RATE * plan.grpc_batch_s / BATCH)
        log(
            f"[{tag}] gRPC IngestBatch of {BATCH}: {plan.grpc_in_flight} in flight, {plan.grpc_batch_s:g} s "
            f"({prepared} requests prepared)"
        )
        channel = grpc.aio.insecure_channel(server.grpc_address)
        stack.push_async_callback(channel.close)
        senders = grpc_senders(channel, ctx.token, clock, plan.grpc_in_flight, prepared)
        await load("grpc_batch", "gRPC batches", senders, plan.grpc_batch_s)

        # 3. One reading per request: keep-alive connections, one request in flight on each. A lean client,
        # because httpx costs milliseconds of CPU per request here and would measure itself.
        log(f"[{tag}] REST one reading per request: {single_conc} connections, {plan.rest_single_s:g} s")
        conns = [RawHttpConnection(host, int(port), headers) for _ in range(single_conc)]
        for conn in conns:
            stack.push_async_callback(conn.close)
        await load("rest_single", "REST one reading per request", raw_senders(conns, clock, 1), plan.rest_single_s)

        # 4. Devices over MQTT, one reading per message: the way most devices report (the nats-server's
        # MQTT listener stores each message in DEVICES; ingest's consumer judges a fetch of them at once).
        log(f"[{tag}] MQTT one reading per message: {MQTT_DEVICES} devices, {plan.rest_single_s:g} s")
        devices = MqttDevices(nats.mqtt_port, MQTT_DEVICES, clock, math.ceil(PREPARED_RATE / 10 * plan.rest_single_s))
        stack.callback(devices.close)
        await load("mqtt_single", "MQTT one reading per message", devices.senders(), plan.rest_single_s)
        devices.close()

        # 5. REST one reading per request with a second front door process on the same ports (SO_REUSEPORT:
        # the kernel spreads the connections): a one-reading request costs the front a few hundred µs, so
        # one front process holds a core and no more; a host with cores to spare runs more of them.
        front2 = None
        if two_fronts:
            ports = (int(port), int(server.grpc_address.rsplit(":", 1)[1]))
            front2 = start_server(work, env, None, ctx.server, "front", ports=ports, name="front2")
            stack.callback(stop_process, front2.proc, 10)
            sampler.watch("ingest-front2", front2.proc.pid)
            pids["front2"] = front2.proc.pid
            log(
                f"[{tag}] REST one reading per request, 2 front processes: {single_conc} connections, "
                f"{plan.rest_single_s:g} s"
            )
            conns2 = [RawHttpConnection(host, int(port), headers) for _ in range(single_conc)]
            for conn in conns2:
                stack.push_async_callback(conn.close)
            await load(
                "rest_single_2",
                "REST one reading per request, 2 fronts",
                raw_senders(conns2, clock, 1),
                plan.rest_single_s,
            )

        ingest_hwm = vm_hwm_bytes(server.proc.pid) or 0
        storage_hwm = vm_hwm_bytes(storage.proc.pid) or 0 if storage is not None else 0
        nats_hwm = vm_hwm_bytes(nats.pid) or 0
        sampler.stop()
        stopped = True
        server.stop()
        if storage is not None:
            storage.stop()
        if profile:
            log(f"[{tag}] server profile: {profile} (main thread), {profile.with_suffix('.threads.prof')} (others)")

    ingest_peak, nats_peak = sampler.peak["ingest"], sampler.peak["nats-server"]
    layout = "front + storage processes" if storage is not None else "one process"
    js_db_limit, js_db_name = min((js_batch, "JetStream"), (db_limit, db_limit_name))
    rows: list[Row] = []
    for key, label in (("rest_batch", f"REST batch {BATCH}"), ("grpc_batch", f"gRPC batch {BATCH}")):
        r = results[key]
        rows.append(
            Row(
                f"{tag}: {label} → stored ({layout})",
                r.e2e_rate,
                "",
                js_db_limit,
                f"min(JetStream, DB) = {js_db_name}",
                GOAL_BATCHED,
                note=f"front door acknowledged {r.acked_rate:,.0f}/s; CPU {r.cpu}; per reading {r.cpu_per_reading()}",
            )
        )
    for key, label in (
        ("rest_single", f"REST 1 reading/request → stored ({layout})"),
        ("mqtt_single", f"MQTT 1 reading/message → stored ({layout})"),
        ("rest_single_2", "REST 1 reading/request → stored (2 front processes + storage)"),
    ):
        if key not in results:
            continue
        r = results[key]
        rows.append(
            Row(
                f"{tag}: {label}",
                r.e2e_rate,
                "",
                js_single_acked,
                f"JetStream publish+ack x{single_conc}",
                GOAL_SINGLE,
                note=f"front door acknowledged {r.acked_rate:,.0f}/s; CPU {r.cpu}; per reading {r.cpu_per_reading()}",
            )
        )
    rows.append(
        Row(
            f"{tag}: ingest {'front' if storage is not None else ''} peak RSS".replace("  ", " "),
            max(ingest_peak, ingest_hwm) / MB,
            "MB",
            GOAL_INGEST_RSS_MB,
            "goal",
            GOAL_INGEST_RSS_MB,
            higher_is_better=False,
            note=(
                f"{ready_rss / MB:.0f} MB when ready, before any request; peak by scenario: "
                + ", ".join(f"{k} {results[k].rss_peak.get('ingest', 0) / MB:.0f} MB" for k in results)
                + f"; kernel VmHWM {ingest_hwm / MB:.0f} MB"
                + (
                    f"; the second front (scenario 5) {sampler.peak['ingest-front2'] / MB:.0f} MB"
                    if "ingest-front2" in sampler.peak
                    else ""
                )
            ),
        )
    )
    if storage is not None:
        rows.append(
            Row(
                f"{tag}: ingest storage process peak RSS",
                max(sampler.peak.get("ingest-storage", 0), storage_hwm) / MB,
                "MB",
                GOAL_INGEST_RSS_MB,
                "goal",
                GOAL_INGEST_RSS_MB,
                higher_is_better=False,
                note=(
                    f"{storage_ready_rss / MB:.0f} MB when ready; peak by scenario: "
                    + ", ".join(f"{k} {results[k].rss_peak.get('ingest-storage', 0) / MB:.0f} MB" for k in results)
                    + f"; kernel VmHWM {storage_hwm / MB:.0f} MB"
                ),
            )
        )
    rows.append(
        Row(
            f"{tag}: nats-server peak RSS",
            max(nats_peak, nats_hwm) / MB,
            "MB",
            GOAL_NATS_RSS_MB,
            "goal",
            GOAL_NATS_RSS_MB,
            higher_is_better=False,
            note=f"kernel VmHWM {nats_hwm / MB:.0f} MB",
        )
    )
    rows.append(Row(f"{tag}: limit JetStream publish_async of {BATCH}", js_batch, ""))
    rows.append(
        Row(
            f"{tag}: limit JetStream publish+ack of 1, x{single_conc}",
            js_single_acked,
            "",
            note=f"publish_async of one-reading messages: {js_single_async:,.0f}/s",
        )
    )
    rows.append(
        Row(
            f"{tag}: limit {db_limit_name}",
            db_limit,
            "",
            note=f"{LIMIT_TXN_ROWS:,} rows per transaction into the ingest schema",
        )
    )
    return rows


# --- entry points --------------------------------------------------------------------------------------


async def run(
    quick: bool, backend: str | None, profile_dir: Path | None, keep: bool, server: str, layout: str = "split"
) -> int:
    plan = QUICK if quick else FULL
    t_start = time.perf_counter()
    backend = backend or ("sqlite" if quick else "all")
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    pg_dsn = pg_admin_dsn()
    if "postgres" in backends:
        why = await pg_reachable(pg_dsn)
        if why is not None:
            if backend == "postgres":
                raise BenchError(f"PostgreSQL not reachable at {pg_dsn}: {why}")
            log(f"PostgreSQL not reachable at {pg_dsn} ({why}): SQLite only")
            backends.remove("postgres")
    if profile_dir:
        log("profiling the server: its figures are slowed down by the profiler")

    work = Path(tempfile.mkdtemp(prefix="lifeline-bench-"))
    ok = False
    rows: list[Row] = []
    idp = BenchIdp(work)
    load = os.getloadavg()
    try:
        idp.start()
        sensors_file = work / "sensors.csv"
        write_sensors_csv(sensors_file, plan.sensors)
        ctx = Ctx(
            work, plan, idp, idp.token(), sensors_file, Clock(sensor_ids(plan.sensors)), profile_dir, server, layout
        )
        log(
            f"ingest bench ({'quick' if quick else 'full'}): {plan.sensors:,} sensors, {os.cpu_count()} CPUs, "
            f"load average {load[0]:.1f}, backends {', '.join(backends)}; work dir {work}"
        )
        for b in backends:
            rows += await bench_backend(b, ctx, pg_dsn)
        ok = True
    finally:
        idp.stop()
        if rows:
            load_end = os.getloadavg()
            title = (
                f"\ningest: {os.cpu_count()} CPUs, {time.perf_counter() - t_start:.0f} s, load average "
                f"{load[0]:.1f} at the start and {load_end[0]:.1f} at the end"
            )
            print(render_table(title, rows), flush=True)
        if ok and not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory (databases, logs) kept: {work}", file=sys.stderr)
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short run (SQLite only unless --backend says)")
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgres", "all"],
        help="all: SQLite, then PostgreSQL when reachable (default; --quick: sqlite)",
    )
    parser.add_argument(
        "--server",
        choices=["auto", "lifeline", "bench"],
        default="auto",
        help="the ingest child: `lifeline run --services ingest` or `python -m bench.ingest serve` "
        "(auto: lifeline when the launcher CLI exists, bench when profiling)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run the server under cProfile (every thread) and write its stats to DIR",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs)")
    parser.add_argument(
        "--layout",
        choices=["split", "single"],
        default="split",
        help="split (default): ingest's front door and its storage consumer in two processes "
        "(LIFELINE_INGEST_ROLES), one core each; single: one process does both",
    )


def run_cli(args: argparse.Namespace) -> int:
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        return run_async(run(args.quick, args.backend, args.profile, args.keep, args.server, args.layout))
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    srv = sub.add_parser("serve", help="run the ingest service from the environment (the bench's child)")
    srv.add_argument("--profile", type=Path, help="write cProfile stats here when stopped")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return run_async(serve(args.profile))
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
