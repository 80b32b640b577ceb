"""Alerts: rule-evaluation throughput, reading → alert latency and memory, next to the raw JetStream round trip.

``python -m bench alerts [--quick] [--backend sqlite|postgres|all] [--keep]`` runs it (see bench/README.md).
With 10,000 sensors (2,500 facilities × 4 quantities) registered through assets' change events on EVENTS
(the bytes assets' outbox publishes), in one run on a fresh nats-server:

1. Evaluation throughput: the engine alone (in this process, no I/O) and through the alerts service's
   durable consumer (a backlog of ReadingsAccepted batches on READINGS drained by the alerts child).
2. Latency, reading accepted by ingest (the IngestBatch reply) → ``events.alerts.raised.*`` received: for
   single-reading traffic, and under sustained ingest load (batches of 500 over gRPC at up to 50,000
   readings/s; the rate reached is printed). Next to it, the raw JetStream round trip (publish with ack →
   delivered to a durable pull consumer) measured at the same time on the same server.
3. The alerts process's RSS with the 10,000 sensors bound, and its peak.

``python -m bench.alerts serve`` is the alerts child: the service built from the environment, ``READY``
on stdout, a clean stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MB,
    BenchError,
    BenchIdp,
    CpuMeter,
    Row,
    RssSampler,
    asyncpg_to_sqlalchemy,
    fresh_pg_database,
    log,
    pg_admin_dsn,
    pg_reachable,
    print_and_clean,
    run_service_bench,
    service_bench_main,
    start_serve_child,
    stop_process,
)

REGION = "340100"
COUNTY = "340104"
BATCH = 500
# Goals from the issue.
GOAL_P99_LOADED_MS = 50.0
GOAL_SINGLE_MS = 10.0
GOAL_RSS_MB = 100.0
TARGET_RATE = 50_000.0
# Four sensors per facility, one per quantity: a normal value (never breaching) and the catalogue unit.
QUANTITIES = (
    ("gas.ch4", "%LEL", 1.0),
    ("gas.pressure", "kPa", 200.0),
    ("road.settlement", "mm", 2.0),
    ("water.chlorine", "mg/L", 0.5),
)
SETPOINT = {"gas.pressure": 200.0}
BREACH_CH4 = 60.0  # above level I (50 %LEL)


@dataclass(frozen=True)
class Plan:
    facilities: int = 2500  # × 4 sensors
    engine_readings: int = 400_000
    backlog_batches: int = 600  # × 500 readings, drained by the alerts consumer
    single_probes: int = 60
    loaded_s: float = 10.0
    probe_interval_s: float = 0.1
    rtt_interval_s: float = 0.02


FULL = Plan()
QUICK = Plan(engine_readings=100_000, backlog_batches=200, single_probes=30, loaded_s=5.0)


# --- the synthetic census and readings ------------------------------------------------------------


@dataclass(frozen=True)
class Sensor:
    sensor_id: str
    quantity: str
    unit: str
    normal: float
    facility: str


def census(plan: Plan) -> list[Sensor]:
    out = []
    for f in range(plan.facilities):
        code = f"3401041102{f:06d}"
        for q, unit, normal in QUANTITIES:
            out.append(Sensor(f"BA-{q.split('.')[1].upper()}-{f:05d}", q, unit, normal, code))
    return out


def census_events(sensors: list[Sensor]) -> Iterator[tuple[str, bytes, str]]:
    """(subject, payload, message id) of the census entries assets writes for the facilities and sensors,
    then the marker of a complete census."""
    from lifeline.kit.census import census_subject, ready_subject
    from lifeline.v1 import assets_pb2

    seen: set[str] = set()
    for s in sensors:
        if s.facility not in seen:
            seen.add(s.facility)
            fac = assets_pb2.Facility(
                code=s.facility, kind=assets_pb2.FACILITY_KIND_GAS, name="燃气管段", region=COUNTY, version=1
            )
            ev = assets_pb2.FacilityChanged(change=assets_pb2.CHANGE_KIND_CREATED, facility=fac)
            yield census_subject("facility", COUNTY, s.facility), ev.SerializeToString(), f"census:{s.facility}:1"
        kw: dict[str, Any] = {"setpoint": SETPOINT[s.quantity]} if s.quantity in SETPOINT else {}
        a = assets_pb2.AssetSensor(
            sensor_id=s.sensor_id,
            facility_code=s.facility,
            quantity=s.quantity,
            region=COUNTY,
            interval_s=60,
            version=1,
            **kw,
        )
        ev2 = assets_pb2.SensorChanged(change=assets_pb2.CHANGE_KIND_CREATED, sensor=a)
        yield census_subject("sensor", COUNTY, s.sensor_id), ev2.SerializeToString(), f"census:{s.sensor_id}:1"
    marker = assets_pb2.CensusComplete(region=REGION, entities={"facility": len(seen), "sensor": len(sensors)})
    yield ready_subject(REGION), marker.SerializeToString(), "census:ready"


def write_sensors_csv(path: Path, sensors: list[Sensor]) -> None:
    """Ingest's registry of the same sensors (the launcher's sample CSV format)."""
    lines = ["sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status,range_min,range_max,note"]
    for i, s in enumerate(sensors):
        lat, lon = 31.80 + (i % 100) * 0.001, 117.20 + (i // 100) * 0.001
        lines.append(f"{s.sensor_id},{s.quantity},{s.unit},{COUNTY},{s.facility},60,{lat:.6f},{lon:.6f},active,,,bench")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class Rounds:
    """Normal readings of the background sensors in device-time order, rounds 60 s apart from 3 days ago."""

    def __init__(self, sensors: list[Sensor], start_ms: int) -> None:
        self.sensors = sensors
        self.start_ms = start_ms
        self.i = 0
        self.k = 0

    def take(self, count: int) -> list[tuple[Sensor, int, float]]:
        out = []
        n = len(self.sensors)
        for _ in range(count):
            s = self.sensors[self.i]
            # A little noise well inside the normal band (the rate rules see a flat series).
            out.append((s, self.start_ms + self.k * 60_000, s.normal * (1.0 + 0.001 * ((self.i + self.k) % 5))))
            self.i += 1
            if self.i == n:
                self.i, self.k = 0, self.k + 1
        if self.start_ms + self.k * 60_000 > time.time_ns() // 1_000_000 - 3_600_000:
            raise BenchError("the synthetic clock ran into the probes' hour; fewer readings or more sensors")
        return out


def accepted_payload(readings: list[tuple[Sensor, int, float]]) -> bytes:
    """What ingest's front door publishes for these readings."""
    from lifeline.kit.readings import message_from_rows
    from lifeline.v1 import common_pb2

    good = common_pb2.QUALITY_GOOD
    rows = [(s.sensor_id, t, v, s.unit, good) for s, t, v in readings]
    return message_from_rows(REGION, rows, time.time_ns() // 1_000_000).SerializeToString()


def freeze_heap() -> float:
    """Collect, then exempt everything alive from later collections; the milliseconds the collection took."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    return (time.perf_counter() - t0) * 1000


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def spread(xs: list[float]) -> str:
    return (
        f"p50 {pct(xs, 50):.1f} ms, p99 {pct(xs, 99):.1f} ms, max {max(xs, default=float('nan')):.1f} ms, n={len(xs)}"
    )


def in_order(xs: list[float]) -> str:
    """Every probe's latency in the order sent: whether the slow ones come first (a cold start) or anywhere."""
    return " ".join(f"{x:.0f}" for x in xs)


# --- the engine alone -------------------------------------------------------------------------------


def engine_throughput(sensors: list[Sensor], n: int) -> tuple[float, int]:
    """Readings/s the rule engine evaluates in this process (no I/O, no decoding); and its rule bindings."""
    from lifeline.alerts.context import sensor_context
    from lifeline.alerts.engine import Engine, FacilityContext
    from lifeline.alerts.policy import load_policy
    from lifeline.kit.catalogue import load_quantities

    engine = Engine(catalogue=load_quantities(), policy=load_policy())
    for s in sensors:
        engine.facilities.setdefault(s.facility, FacilityContext(code=s.facility, kind="gas", region=COUNTY))
        doc: dict[str, Any] = {
            "sensor_id": s.sensor_id,
            "quantity": s.quantity,
            "facility_code": s.facility,
            "region": COUNTY,
            "change": "created",
        }
        if s.quantity in SETPOINT:
            doc["setpoint"] = SETPOINT[s.quantity]
        engine.set_sensor(sensor_context(doc))
    bindings = sum(len(engine.rules_for(engine.sensors[s.sensor_id])) for s in sensors)
    readings = [
        (s.sensor_id, t, v) for s, t, v in Rounds(sensors, time.time_ns() // 1_000_000 - 3 * 86_400_000).take(n)
    ]
    evaluate = engine.evaluate
    t0 = time.perf_counter()
    engine.begin()
    for i, (sid, t, v) in enumerate(readings):
        if evaluate(sid, t, v):
            raise BenchError(f"a normal reading changed an alert: {sid} {v}")
        if i % BATCH == BATCH - 1:
            engine.commit()
            engine.begin()
    engine.commit()
    return n / (time.perf_counter() - t0), bindings


# --- the alerts child -------------------------------------------------------------------------------


async def serve() -> int:
    """Run one alerts service from the environment until SIGTERM (what `lifeline run` would do)."""
    from lifeline.alerts.app import AlertsApp
    from lifeline.alerts.settings import AlertsSettings
    from lifeline.kit.auth import TokenVerifier
    from lifeline.kit.bus import Bus
    from lifeline.kit.config import InstanceSettings
    from lifeline.kit.migrations import migrate_in_child
    from lifeline.kit.telemetry import setup_telemetry

    instance = InstanceSettings()
    settings = AlertsSettings()
    setup_telemetry(instance)
    bus = Bus(instance.nats_url, name="bench-alerts", user=instance.nats_user, password=instance.nats_password)
    await bus.start()
    await bus.wait_ready(15)
    verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)
    app = AlertsApp(instance=instance, settings=settings, bus=bus, verifier=verifier)
    # As `lifeline run` does: migrated by a child process, so this one never imports Alembic.
    assert AlertsApp.migrations is not None
    await migrate_in_child([(app.database_url, AlertsApp.migrations)])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        print(f"READY {len(app.service.engine.sensors)}", flush=True)
        await stop.wait()
    finally:
        await app.stop()
        await bus.close()
        await verifier.aclose()
    return 0


# --- latency probes ---------------------------------------------------------------------------------


class RaisedEvents:
    """Core subscription on events.alerts.raised.>: when each (sensor, reading time) was seen raised."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.seen: dict[tuple[str, int], float] = {}
        self.waiters: dict[tuple[str, int], asyncio.Future[float]] = {}
        self.sub: Any = None

    async def start(self) -> None:
        from lifeline.v1 import alerts_pb2

        async def on_msg(msg: Any) -> None:
            now = time.perf_counter()
            ev = alerts_pb2.AlertEvent.FromString(msg.data)
            key = (ev.alert.sensor_id, ev.reading_time_ms)
            self.seen[key] = now
            fut = self.waiters.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(now)

        self.sub = await self.nc.subscribe("events.alerts.raised.>", cb=on_msg)

    def expect(self, key: tuple[str, int]) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if key in self.seen:
            fut.set_result(self.seen[key])
        else:
            self.waiters[key] = fut
        return fut


class JsRoundTrip:
    """The raw JetStream round trip on the same server: js.publish (stored, acked) → a durable pull consumer."""

    def __init__(self, js: Any, interval_s: float) -> None:
        self.js = js
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def setup(self) -> None:
        from nats.js.api import StreamConfig

        await self.js.add_stream(StreamConfig(name="BENCHRTT", subjects=["benchrtt.>"], max_age=3600))
        self.sub = await self.js.pull_subscribe("benchrtt.x", durable="rtt", stream="BENCHRTT")

    async def _run(self) -> None:
        import nats.errors

        while not self._stopping:
            t0 = time.perf_counter()
            await self.js.publish("benchrtt.x", b"x", headers={"Nats-Msg-Id": secrets.token_hex(8)})
            while True:
                try:
                    msgs = await self.sub.fetch(1, timeout=5)
                    break
                except nats.errors.TimeoutError:
                    continue
            self.samples.append((time.perf_counter() - t0) * 1000)
            await msgs[0].ack()
            await asyncio.sleep(self.interval_s)

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        self.samples = []
        self._stopping = False
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            # The flag as well as the cancel: nats-py's fetch (asyncio.wait_for on Python 3.11) can swallow
            # a cancellation that lands as a message arrives, and the loop then ran on and hung the bench.
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Probes:
    """Raising readings of sensors the background load does not send: each used once (two breaches, `for`)."""

    def __init__(self, stub: Any, token: str, sensors: list[Sensor], events: RaisedEvents) -> None:
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.free = list(sensors)
        self.events = events
        self.latencies: list[float] = []
        self.from_send: list[float] = []

    async def _send(self, s: Sensor, t: int, v: float) -> float:
        from lifeline.v1 import common_pb2, telemetry_pb2

        req = telemetry_pb2.IngestBatchRequest()
        req.readings.add(sensor_id=s.sensor_id, device_time_ms=t, value=v, unit=s.unit, quality=common_pb2.QUALITY_GOOD)
        resp = await self.stub.IngestBatch(req, metadata=self.metadata, timeout=30)
        if resp.accepted != 1:
            raise BenchError(f"probe reading of {s.sensor_id} refused: {resp.results}")
        return time.perf_counter()

    async def one(self) -> None:
        if not self.free:
            raise BenchError("out of probe sensors")
        s = self.free.pop()
        t = time.time_ns() // 1_000_000 - 120_000
        try:
            async with asyncio.timeout(60):
                # The first breach opens the `for` window (gas: 30 s), the second one, 60 s later, raises.
                await self._send(s, t, BREACH_CH4)
                fut = self.events.expect((s.sensor_id, t + 60_000))
                sent = time.perf_counter()
                accepted = await self._send(s, t + 60_000, BREACH_CH4)
                seen = await fut
        except TimeoutError as exc:
            raise BenchError(f"probe {s.sensor_id}: no raised event within 60 s") from exc
        self.latencies.append((seen - accepted) * 1000)
        self.from_send.append((seen - sent) * 1000)


async def wait_drained(
    js: Any, durable: str = f"alerts-readings-{REGION}", stream: str = "READINGS", timeout: float = 120
) -> float:
    """Wait until a durable consumer of alerts has nothing pending; the time it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        with contextlib.suppress(Exception):  # the durable does not exist until its first pull
            info = await js.consumer_info(stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return time.perf_counter() - t0
        await asyncio.sleep(0.05)
    raise BenchError(f"alerts' consumer {durable} did not drain {stream} within {timeout:.0f} s")


# --- one backend ------------------------------------------------------------------------------------


async def bench_backend(backend: str, work: Path, plan: Plan, idp: BenchIdp, token: str, pg_dsn: str) -> list[Row]:
    import grpc
    import nats

    from bench.ingest import start_server
    from lifeline.kit.bus import declare_streams
    from lifeline.kit.natsserver import NatsServer
    from lifeline.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

    tag = "SQLite" if backend == "sqlite" else "PostgreSQL"
    work = work / backend
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    sensors = census(plan)
    ch4 = [s for s in sensors if s.quantity == "gas.ch4"]
    # Probe sensors are methane sensors the background load leaves alone.
    n_probes = plan.single_probes + int(plan.loaded_s / plan.probe_interval_s) + 20
    probes, background = ch4[:n_probes], [s for s in sensors if s not in set(ch4[:n_probes])]
    sensors_file = work / "sensors.csv"
    write_sensors_csv(sensors_file, sensors)

    log(f"[{tag}] engine alone: {plan.engine_readings:,} normal readings of {len(sensors):,} sensors")
    engine_rate, bindings = engine_throughput(sensors, plan.engine_readings)
    log(
        f"[{tag}]   {engine_rate:,.0f} readings/s; {bindings:,} rule bindings "
        f"({bindings / len(sensors):.2f} per sensor)"
    )

    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            db_url = f"sqlite+aiosqlite:///{work / 'alerts.db'}"
        else:
            db_url = asyncpg_to_sqlalchemy(await stack.enter_async_context(fresh_pg_database(pg_dsn)))
        server = NatsServer(store_dir=work / "nats")
        server.start()
        stack.callback(server.stop)
        assert server.pid is not None
        sampler = RssSampler().start()
        stack.callback(sampler.stop)
        sampler.watch("nats-server", server.pid)
        nc = await nats.connect(server.url)
        stack.push_async_callback(asyncio.wait_for, nc.close(), 10)
        js = nc.jetstream(timeout=30)
        await declare_streams(js)

        # The census, as assets writes it on the bus, applied before anything else is measured.
        t0 = time.perf_counter()
        n_events = 0
        for subject, payload, msg_id in census_events(sensors):
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
            n_events += 1
        await js.publish_async_completed()
        env = {
            "LIFELINE_REGION": REGION,
            "LIFELINE_DATA_DIR": str(work),
            "LIFELINE_NATS_URL": server.url,
            "LIFELINE_OIDC_ISSUER": idp.issuer,
            "LIFELINE_ALERTS_DATABASE_URL": db_url,
            "LIFELINE_INGEST_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'ingest.db'}",
            "LIFELINE_INGEST_SENSORS_FILE": str(sensors_file),
        }
        alerts, _, alerts_log = start_serve_child(
            "bench.alerts", work, {**env, "LIFELINE_ALERTS_HTTP_PORT": "0", "LIFELINE_ALERTS_GRPC_PORT": "0"}
        )
        stack.callback(stop_process, alerts, 30)
        sampler.watch("alerts", alerts.pid)
        rss_ready = sampler.current("alerts")
        census_s = await wait_drained(js, f"alerts-census-{REGION}", "KV_census", 300)
        rss_census = sampler.current("alerts")
        log(
            f"[{tag}] alerts ready, {n_events:,} census events applied {time.perf_counter() - t0:.1f} s after the "
            f"start; RSS {rss_ready / MB:.0f} MB at READY, {rss_census / MB:.0f} MB with the census"
        )

        # Throughput through the consumer: a backlog published as fast as JetStream takes it, drained.
        rounds = Rounds(background, time.time_ns() // 1_000_000 - 3 * 86_400_000)
        payloads = [accepted_payload(rounds.take(BATCH)) for _ in range(plan.backlog_batches)]
        t0 = time.perf_counter()
        for payload in payloads:
            await js.publish_async(f"readings.{REGION}", payload, headers={"Nats-Msg-Id": secrets.token_hex(8)})
        await js.publish_async_completed()
        t_published = time.perf_counter()
        await wait_drained(js, f"alerts-readings-{REGION}", "READINGS", 300)
        backlog = plan.backlog_batches * BATCH
        consumer_rate = backlog / (time.perf_counter() - t0)
        log(
            f"[{tag}]   {backlog:,} readings published in {t_published - t0:.2f} s, evaluated by alerts at "
            f"{consumer_rate:,.0f} readings/s (census took {census_s:.1f} s)"
        )
        await asyncio.sleep(1.0)
        rss_idle = sampler.current("alerts")
        log(f"[{tag}]   alerts RSS with {len(sensors):,} sensors: {rss_idle / MB:.0f} MB after evaluating the backlog")

        ingest = start_server(work, env, None, "auto", "front")
        stack.callback(stop_process, ingest.proc, 30)
        sampler.watch("ingest", ingest.proc.pid)
        channel = grpc.aio.insecure_channel(ingest.grpc_address)
        stack.push_async_callback(channel.close)
        stub = telemetry_pb2_grpc.TelemetryIngestStub(channel)
        events = RaisedEvents(nc)
        await events.start()
        rtt = JsRoundTrip(js, plan.rtt_interval_s)
        await rtt.setup()
        pids = {"alerts": alerts.pid, "ingest": ingest.proc.pid, "nats": server.pid, "bench": os.getpid()}

        # The load generator must not measure itself: a full collection of this process's heap (the
        # census, the prepared requests) paused it for ~0.1 s in the middle of a probe now and then.
        gc_ms = freeze_heap()
        log(f"[{tag}]   (load generator's heap frozen; a full collection of it took {gc_ms:.0f} ms)")

        # Single-reading traffic: one raising reading at a time, nothing else going on.
        log(f"[{tag}] single readings: {plan.single_probes} probes (two breaching readings each, the second raises)")
        single = Probes(stub, token, probes, events)
        # One probe first, not counted, as the ingest bench warms its server: ingest was started just now
        # (the bench's channel connects, the token is checked for the first time, ingest's start-up work
        # still runs beside it). Alerts warms its own first raise at start (AlertsService.warm_up).
        await single.one()
        log(f"[{tag}]   warm-up probe (not counted): {single.latencies.pop():.1f} ms")
        single.from_send.clear()
        async with rtt.running():
            with CpuMeter(pids) as cpu_single:
                for _ in range(plan.single_probes):
                    await single.one()
                    await asyncio.sleep(plan.probe_interval_s)
        rtt_single = list(rtt.samples)
        log(f"[{tag}]   accepted → raised: {spread(single.latencies)}; sent → raised: {spread(single.from_send)}")
        log(f"[{tag}]   in probe order: {in_order(single.latencies)}")
        log(f"[{tag}]   JetStream round trip: {spread(rtt_single)}; {cpu_single.summary()}")

        # Sustained load: batches of 500 through ingest at up to TARGET_RATE, probes in between.
        metadata = (("authorization", f"Bearer {token}"),)
        good = common_pb2.QUALITY_GOOD
        n_req = int(TARGET_RATE * plan.loaded_s / BATCH)
        reqs = []
        for _ in range(n_req):
            req = telemetry_pb2.IngestBatchRequest()
            add = req.readings.add
            for s, t, v in rounds.take(BATCH):
                add(sensor_id=s.sensor_id, device_time_ms=t, value=v, unit=s.unit, quality=good)
            reqs.append(req)
        freeze_heap()
        log(f"[{tag}] sustained load: {n_req} IngestBatch of {BATCH} paced at {TARGET_RATE:,.0f} readings/s, probes")
        loaded = Probes(stub, token, single.free, events)
        accepted = 0
        interval = BATCH / TARGET_RATE

        async def sender(k: int, every: int) -> None:
            nonlocal accepted
            t_start = time.perf_counter()
            for i in range(k, n_req, every):
                due = t_start + (i - k) / every * interval * every
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                resp = await stub.IngestBatch(reqs[i], metadata=metadata, timeout=60)
                if resp.accepted != BATCH:
                    raise BenchError(f"IngestBatch accepted {resp.accepted} of {BATCH}")
                accepted += BATCH

        async def prober(stop: asyncio.Event) -> None:
            while not stop.is_set():
                await loaded.one()
                await asyncio.sleep(plan.probe_interval_s)

        stop_probes = asyncio.Event()
        async with rtt.running():
            with CpuMeter(pids) as cpu_loaded:
                t0 = time.perf_counter()
                probe_task = asyncio.create_task(prober(stop_probes))
                await asyncio.gather(*(sender(k, 8) for k in range(8)))
                t_sent = time.perf_counter()
                stop_probes.set()
                await probe_task
                await wait_drained(js)
                t_done = time.perf_counter()
        rtt_loaded = list(rtt.samples)
        rate = accepted / (t_sent - t0)
        evaluated_rate = accepted / (t_done - t0)
        log(
            f"[{tag}]   ingest accepted {rate:,.0f} readings/s; alerts drained them at {evaluated_rate:,.0f}/s "
            f"(lag at the end {t_done - t_sent:.2f} s)"
        )
        log(f"[{tag}]   accepted → raised: {spread(loaded.latencies)}; sent → raised: {spread(loaded.from_send)}")
        log(f"[{tag}]   in probe order: {in_order(loaded.latencies)}")
        log(f"[{tag}]   JetStream round trip: {spread(rtt_loaded)}; {cpu_loaded.summary()}")
        peaks = sampler.next_phase()
        errors = [ln for ln in alerts_log.read_text(errors="replace").splitlines() if '"level": "ERROR"' in ln]
        if errors:
            raise BenchError("the alerts service logged errors:\n" + "\n".join(e[:400] for e in errors[-5:]))

    p = tag
    rows += [
        Row(f"{p} engine alone", engine_rate, "", note=f"{bindings:,} rule bindings, {len(sensors):,} sensors"),
        Row(
            f"{p} through the consumer",
            consumer_rate,
            "",
            limit=engine_rate,
            limit_name="engine alone",
            note=f"a backlog of {backlog:,} readings on READINGS, from the first publish to the consumer drained",
        ),
    ]
    for name, lat, rtts, goal, note in (
        ("single reading", single.latencies, rtt_single, GOAL_SINGLE_MS, cpu_single.summary()),
        (
            f"at {rate / 1000:,.0f}k readings/s",
            loaded.latencies,
            rtt_loaded,
            GOAL_P99_LOADED_MS,
            f"rate reached {rate:,.0f}/s (target {TARGET_RATE:,.0f}); {cpu_loaded.summary()}",
        ),
    ):
        rows.append(
            Row(
                f"{p} p50 {name}",
                pct(lat, 50),
                "ms",
                limit=pct(rtts, 50),
                limit_name="JetStream p50",
                higher_is_better=False,
            )
        )
        rows.append(
            Row(
                f"{p} p99 {name}",
                pct(lat, 99),
                "ms",
                limit=pct(rtts, 99),
                limit_name="JetStream p99",
                goal=goal,
                higher_is_better=False,
                note=f"n={len(lat)}; {note}",
            )
        )
    rows.append(
        Row(
            f"{p} alerts RSS, 10k sensors",
            rss_idle / MB,
            "MB",
            goal=GOAL_RSS_MB,
            higher_is_better=False,
            note=f"after the backlog; {rss_ready / MB:.0f} MB at READY, {rss_census / MB:.0f} MB with the census",
        )
    )
    rows.append(
        Row(
            f"{p} alerts peak RSS",
            peaks.get("alerts", 0) / MB,
            "MB",
            goal=GOAL_RSS_MB,
            higher_is_better=False,
            note="peak over the whole run (backlog, probes, sustained load)",
        )
    )
    return rows


async def run(quick: bool, backend: str | None, keep: bool) -> int:
    plan = QUICK if quick else FULL
    t_start = time.perf_counter()
    backend = backend or "sqlite"
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    pg_dsn = pg_admin_dsn()
    if "postgres" in backends and (why := await pg_reachable(pg_dsn)) is not None:
        if backend == "postgres":
            raise BenchError(f"PostgreSQL not reachable at {pg_dsn}: {why}")
        log(f"PostgreSQL not reachable at {pg_dsn} ({why}): SQLite only")
        backends.remove("postgres")
    work = Path(tempfile.mkdtemp(prefix="lifeline-bench-alerts-"))
    load = os.getloadavg()
    log(
        f"alerts bench ({'quick' if quick else 'full'}): {plan.facilities * 4:,} sensors, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f}, backends {', '.join(backends)}; work dir {work}"
    )
    rows: list[Row] = []
    ok = False
    idp = BenchIdp(work)
    try:
        idp.start()
        token = idp.token()
        for b in backends:
            try:
                # Nothing may hang the bench: a stuck step fails it (with the table so far).
                async with asyncio.timeout(900):
                    rows += await bench_backend(b, work, plan, idp, token, pg_dsn)
            except TimeoutError as exc:
                raise BenchError(f"[{b}] did not finish within 15 minutes") from exc
        ok = True
    finally:
        idp.stop()
        print_and_clean("alerts", rows, t_start=t_start, load=load, value_header="value", ok=ok, keep=keep, work=work)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    return run_service_bench(run, args)


def main(argv: list[str] | None = None) -> int:
    return service_bench_main("alerts", __doc__ or "alerts", argv, run, serve)


if __name__ == "__main__":
    sys.exit(main())
