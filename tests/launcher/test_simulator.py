"""The sensor simulator: realistic, deterministic readings, scripted incidents, and the posting client."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lifeline.kit.catalogue import Level, Measure, QuantityCatalogue, SensorSpec, load_quantities
from lifeline.launcher.simulator import (
    Faults,
    GasLeak,
    Simulator,
    WaterBurst,
    run_simulator,
    sample_sensors,
)

MIN = 60_000
HOUR = 3_600_000
# 2025-01-15 00:00 in Hefei (UTC+8).
MIDNIGHT = 1_736_870_400_000
TEN_AM = MIDNIGHT + 10 * HOUR


@pytest.fixture(scope="module")
def cat() -> QuantityCatalogue:
    return load_quantities()


@pytest.fixture(scope="module")
def sensors(cat: QuantityCatalogue) -> dict[str, SensorSpec]:
    return sample_sensors(cat)


def canonical(cat: QuantityCatalogue, sensors: dict[str, SensorSpec], r: dict[str, Any]) -> float:
    return cat.get(sensors[r["sensor_id"]].quantity).convert(r["value"], r["unit"])


def of(readings: list[dict[str, Any]], sensor_id: str) -> list[dict[str, Any]]:
    return [r for r in readings if r["sensor_id"] == sensor_id]


def test_sample_census_is_current() -> None:
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(repo / "tools" / "make_sample_sensors.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_readings_have_the_ingest_shape(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    sim = Simulator(sensors, cat, 1, TEN_AM)
    readings = sim.readings_between(TEN_AM, TEN_AM + 10 * MIN)
    assert readings
    for r in readings:
        assert set(r) == {"sensor_id", "device_time_ms", "value", "unit", "quality"}
        assert TEN_AM <= r["device_time_ms"] < TEN_AM + 10 * MIN
        assert r["quality"] in {"good", "suspect", "bad", "maintenance"}
        assert r["unit"] == sensors[r["sensor_id"]].unit
        assert isinstance(r["value"], float)
    json.dumps({"readings": readings})
    retired = {sid for sid, s in sensors.items() if not s.active}
    assert retired and not retired & {r["sensor_id"] for r in readings}
    assert {sid for sid, s in sensors.items() if s.active} == set(sim.sensor_ids)


def test_deterministic_with_a_seed(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    a = Simulator(sensors, cat, 42, TEN_AM).readings_between(TEN_AM - HOUR, TEN_AM + 30 * MIN)
    b = Simulator(sensors, cat, 42, TEN_AM).readings_between(TEN_AM - HOUR, TEN_AM + 30 * MIN)
    assert a == b
    # The same window cut in pieces gives the same readings: values depend on (seed, sensor, time) only.
    sim = Simulator(sensors, cat, 42, TEN_AM)
    pieces = sim.readings_between(TEN_AM - HOUR, TEN_AM - 17 * MIN) + sim.readings_between(
        TEN_AM - 17 * MIN, TEN_AM + 30 * MIN
    )
    assert sorted(pieces, key=lambda r: (r["device_time_ms"], r["sensor_id"])) == a
    c = Simulator(sensors, cat, 43, TEN_AM).readings_between(TEN_AM - HOUR, TEN_AM + 30 * MIN)
    assert [r["value"] for r in a] != [r["value"] for r in c]


def test_daily_water_cycle(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    sim = Simulator(sensors, cat, 7, MIDNIGHT, gas_leak=None, water_burst=None, faults=Faults(bad_rate=0))
    night = sim.readings_between(MIDNIGHT + 2 * HOUR, MIDNIGHT + 4 * HOUR)
    morning = sim.readings_between(MIDNIGHT + 6 * HOUR + 30 * MIN, MIDNIGHT + 8 * HOUR + 30 * MIN)
    flows = [sid for sid, s in sensors.items() if s.quantity == "water.flow" and s.active]
    assert len(flows) >= 10
    for sid in flows:
        low = min(canonical(cat, sensors, r) for r in of(night, sid))
        peak = max(canonical(cat, sensors, r) for r in of(morning, sid))
        assert low < 0.5 * peak, sid
    # Night minimum flow of a DMA (reported once a day) sits below its inlet's morning peak.
    nmf_ids = [sid for sid, s in sensors.items() if s.quantity == "water.night_min_flow" and s.active]
    day = sim.readings_between(MIDNIGHT, MIDNIGHT + 24 * HOUR, nmf_ids)
    checked = 0
    for sid, s in sensors.items():
        if s.quantity != "water.night_min_flow" or not s.active:
            continue
        inlet = next(o for o in sensors.values() if o.quantity == "water.flow" and o.facility_code == s.facility_code)
        (nmf,) = of(day, sid)
        peak = max(canonical(cat, sensors, r) for r in of(morning, inlet.sensor_id))
        assert canonical(cat, sensors, nmf) < 0.5 * peak
        checked += 1
    assert checked >= 5
    # Pressure moves the other way: higher at night than at the morning peak.
    for sid in [sid for sid, s in sensors.items() if s.quantity == "water.pressure" and s.active]:
        night_p = sum(sim.canonical_value(sid, MIDNIGHT + 3 * HOUR + k * MIN) for k in range(30))
        peak_p = sum(sim.canonical_value(sid, MIDNIGHT + 7 * HOUR + 30 * MIN + k * MIN) for k in range(30))
        assert night_p > peak_p, sid


def test_gas_leak_crosses_each_level_in_order(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    sim = Simulator(sensors, cat, 3, TEN_AM, gas_leak=GasLeak(start_s=120), water_burst=None)
    leak = sim.incidents["gas_leak"]
    assert sensors[leak.primary].quantity == "gas.ch4"
    (pressure_id,) = [sid for sid in leak.affected if sid != leak.primary]
    assert sensors[pressure_id].quantity == "gas.pressure"
    assert leak.start_ms == TEN_AM + 120_000

    readings = sim.readings_between(TEN_AM - 30 * MIN, leak.peak_ms + 5 * MIN)
    rule = cat.get("gas.ch4").rules(Measure.VALUE)[0]
    assert all(r["quality"] == "good" for r in of(readings, leak.primary) if r["device_time_ms"] >= leak.start_ms)
    ch4 = [
        (r["device_time_ms"], rule.level_for(canonical(cat, sensors, r)))
        for r in of(readings, leak.primary)
        if r["quality"] == "good"
    ]
    assert all(level is None for t, level in ch4 if t < leak.start_ms)  # (suspect/bad ones left out)
    first: dict[Level, int] = {}
    for t, level in ch4:
        if level is not None:
            first.setdefault(level, t)
    assert list(first) == [Level.IV, Level.III, Level.II, Level.I]
    assert first[Level.IV] < first[Level.III] < first[Level.II] < first[Level.I] <= leak.peak_ms
    assert first[Level.I] - first[Level.IV] >= 3 * MIN  # "over minutes", seen at 10 s resolution

    # The main's pressure deviates from its setpoint through the gas-pressure levels too.
    baseline = [canonical(cat, sensors, r) for r in of(readings, pressure_id) if r["device_time_ms"] < leak.start_ms]
    setpoint = sum(baseline) / len(baseline)
    dev_rule = cat.get("gas.pressure").rules(Measure.DEVIATION_PCT)[0]
    deviations = [
        abs(canonical(cat, sensors, r) - setpoint) / setpoint * 100
        for r in of(readings, pressure_id)
        if r["device_time_ms"] >= leak.start_ms
    ]
    assert max(dev_rule.level_for(d) or Level.IV for d in deviations[:3]) is Level.IV
    assert dev_rule.level_for(max(deviations)) is Level.II


def test_water_burst_drops_pressure_on_the_segment(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    sim = Simulator(sensors, cat, 5, TEN_AM, gas_leak=None, water_burst=WaterBurst(start_s=600))
    burst = sim.incidents["water_burst"]
    assert sensors[burst.primary].quantity == "water.pressure"
    readings = [r for r in sim.readings_between(TEN_AM, burst.start_ms + 40 * MIN) if r["quality"] == "good"]

    def drop(sid: str) -> float:
        before = [canonical(cat, sensors, r) for r in of(readings, sid) if r["device_time_ms"] < burst.start_ms]
        during = [
            canonical(cat, sensors, r)
            for r in of(readings, sid)
            if burst.start_ms + 3 * MIN <= r["device_time_ms"] < burst.start_ms + 40 * MIN
        ]
        base = sum(before) / len(before)
        return (base - max(during)) / base * 100

    rule = cat.get("water.pressure").rules(Measure.DROP_PCT)[0]
    primary_drop = drop(burst.primary)
    assert rule.level_for(primary_drop) is Level.I
    neighbours = [sid for sid in burst.affected if sid != burst.primary and sensors[sid].quantity == "water.pressure"]
    assert neighbours
    for sid in neighbours:
        assert 5 < drop(sid) < primary_drop
    unaffected = [
        sid for sid, s in sensors.items() if s.quantity == "water.pressure" and s.active and sid not in burst.affected
    ]
    assert all(drop(sid) < 8 for sid in unaffected)
    flows = [sid for sid in burst.affected if sensors[sid].quantity == "water.flow"]
    assert flows
    for sid in flows:
        assert drop(sid) < -20  # a negative drop: flow rises


def test_pressure_runs_around_the_registry_setpoint_and_baseline(
    cat: QuantityCatalogue, sensors: dict[str, SensorSpec]
) -> None:
    # The census's setpoint/baseline are what the sensors run around (what alerts compares with): a day
    # of normal operation stays inside the IV thresholds (10 %), so the demo raises nothing before the
    # incidents; another setpoint in the registry moves the readings with it.
    sample = {sid: s for sid, s in sensors.items() if s.quantity in ("gas.pressure", "water.pressure") and s.active}
    sim = Simulator(sample, cat, 7, MIDNIGHT, gas_leak=None, water_burst=None)
    readings = [r for r in sim.readings_between(MIDNIGHT, MIDNIGHT + 24 * HOUR) if r["quality"] == "good"]
    assert readings
    for sid, spec in sample.items():
        nominal = spec.setpoint if spec.quantity == "gas.pressure" else spec.baseline
        assert nominal is not None, sid
        worst = max(abs(canonical(cat, sample, r) - nominal) / nominal * 100 for r in of(readings, sid))
        assert worst < 8, (sid, worst)
    gas = next(s for s in sample.values() if s.quantity == "gas.pressure")
    moved = {gas.sensor_id: gas.model_copy(update={"setpoint": gas.setpoint * 2})}
    doubled = Simulator(moved, cat, 7, MIDNIGHT, gas_leak=None, water_burst=None).readings_between(
        MIDNIGHT, MIDNIGHT + HOUR
    )
    mean = sum(canonical(cat, moved, r) for r in doubled) / len(doubled)
    assert mean == pytest.approx(gas.setpoint * 2, rel=0.05)


def test_dropouts_produce_gaps(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    sim = Simulator(sensors, cat, 11, MIDNIGHT, gas_leak=None, water_burst=None)
    start, end = MIDNIGHT, MIDNIGHT + 24 * HOUR
    readings = sim.readings_between(start, end)
    by_sensor: dict[str, list[int]] = {}
    for r in readings:
        by_sensor.setdefault(r["sensor_id"], []).append(r["device_time_ms"])
    gaps = []
    for sid, times in by_sensor.items():
        interval = sensors[sid].interval_s * 1000
        for a, b in itertools.pairwise(times):
            if b - a > interval:
                gaps.append((sid, a, b))
                assert b - a >= 15 * MIN or b - a >= 2 * interval
                assert sim.silent(sid, a + interval)
    assert len({sid for sid, _, _ in gaps}) >= 3
    # Without dropouts every sensor reports on its interval.
    clean = Simulator(sensors, cat, 11, MIDNIGHT, gas_leak=None, water_burst=None, faults=Faults(dropout_rate=0))
    counts = Counter(r["sensor_id"] for r in clean.readings_between(start, start + 6 * HOUR))
    for sid in clean.sensor_ids:
        assert counts[sid] == 6 * 3600 // sensors[sid].interval_s or sensors[sid].interval_s > 6 * 3600


def test_readings_in_physical_range_except_deliberate_bad_ones(
    cat: QuantityCatalogue, sensors: dict[str, SensorSpec]
) -> None:
    sim = Simulator(sensors, cat, 13, TEN_AM, gas_leak=GasLeak(start_s=60), water_burst=WaterBurst(start_s=120))
    readings = sim.readings_between(TEN_AM - 8 * HOUR, TEN_AM + 2 * HOUR)
    quality = Counter(r["quality"] for r in readings)
    assert quality["good"] > 0.98 * len(readings)
    assert quality["suspect"] and quality["bad"]
    for r in readings:
        spec = sensors[r["sensor_id"]]
        q = cat.get(spec.quantity)
        lo, hi = cat.sensor_range(spec)
        v = q.convert(r["value"], r["unit"])
        inside = lo - 1e-9 <= v <= hi + 1e-9 and q.in_range(v)
        assert inside == (r["quality"] != "bad"), r


def test_time_acceleration_and_snapshot(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    sim = Simulator(sensors, cat, 1, TEN_AM, speed=60)
    assert sim.sim_time(0) == TEN_AM
    assert sim.sim_time(2.5) == TEN_AM + 150_000
    snap = sim.readings_at(TEN_AM + 5 * MIN)
    assert {r["device_time_ms"] for r in snap} == {TEN_AM + 5 * MIN}
    assert len(snap) >= 0.9 * len(sim.sensor_ids)
    backfill = list(sim.batches(TEN_AM - 2 * HOUR, TEN_AM, batch_size=500))
    assert all(0 < len(b) <= 500 for b in backfill)
    assert [r for b in backfill for r in b] == sim.readings_between(TEN_AM - 2 * HOUR, TEN_AM)


# ───────────────────────── run_simulator against a tiny ingest ─────────────────────────


class FakeIngest:
    """Stand-in for ingest's POST /v1/readings: 503 with Retry-After for the first calls, then 200."""

    def __init__(self, fail_first: int, retry_after: str = "0") -> None:
        self.fail_first = fail_first
        self.retry_after = retry_after
        self.calls = 0
        self.stored: list[dict[str, Any]] = []
        self.keys: set[tuple[str, int]] = set()
        self.tokens: list[str] = []
        self.app = FastAPI()
        self.app.post("/v1/readings")(self.post)

    async def post(self, request: Request) -> Any:
        self.calls += 1
        self.tokens.append(request.headers.get("authorization", ""))
        if self.calls <= self.fail_first:
            return JSONResponse(
                {"title": "bus unavailable", "status": 503},
                status_code=503,
                headers={"Retry-After": self.retry_after},
            )
        body = await request.json()
        results = []
        accepted = duplicates = 0
        for i, r in enumerate(body["readings"]):
            key = (r["sensor_id"], r["device_time_ms"])
            if key in self.keys:
                duplicates += 1
                results.append({"index": i, "status": "duplicate", "reason": "", "detail": ""})
            else:
                self.keys.add(key)
                self.stored.append(r)
                accepted += 1
                results.append({"index": i, "status": "accepted", "reason": "", "detail": ""})
        return {"results": results, "accepted": accepted, "duplicates": duplicates, "rejected": 0}


def small_registry(sensors: dict[str, SensorSpec]) -> dict[str, SensorSpec]:
    wanted = ("gas.ch4", "gas.pressure", "water.pressure", "water.flow", "drainage.ponding")
    picked: dict[str, SensorSpec] = {}
    for code in wanted:
        for sid in [sid for sid, s in sensors.items() if s.quantity == code and s.active][:6]:
            picked[sid] = sensors[sid]
    return picked


def content(readings: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in readings)


async def test_run_simulator_retries_503_and_delivers_every_batch_once(
    cat: QuantityCatalogue, sensors: dict[str, SensorSpec]
) -> None:
    ingest = FakeIngest(fail_first=3)
    registry = small_registry(sensors)
    start = TEN_AM
    sim = Simulator(registry, cat, 21, start, speed=3600, gas_leak=GasLeak(start_s=60), water_burst=None)
    token_calls = 0

    async def token() -> str:
        nonlocal token_calls
        token_calls += 1
        return "tok-sim"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingest.app), base_url="http://ingest") as client:
        stats = await asyncio.wait_for(
            run_simulator(
                "http://ingest",
                token,
                sim,
                batch_size=200,
                rate=0,
                backfill_hours=1,
                until_ms=start + 20 * MIN,
                tick_s=0.02,
                client=client,
            ),
            timeout=60,
        )
    expected = sim.readings_between(start - HOUR, start + 20 * MIN)
    assert content(ingest.stored) == content(expected)  # every reading exactly once, by content
    assert len(ingest.keys) == len(expected)
    assert stats.retries == 3
    assert stats.sent == stats.accepted == len(expected)
    assert stats.duplicates == stats.rejected == stats.failed == 0
    assert stats.batches == ingest.calls - 3
    assert token_calls == ingest.calls
    assert set(ingest.tokens) == {"Bearer tok-sim"}


async def test_run_simulator_honours_retry_after(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    ingest = FakeIngest(fail_first=1, retry_after="1")
    sim = Simulator(small_registry(sensors), cat, 2, TEN_AM, gas_leak=None, water_burst=None)

    async def token() -> str:
        return "t"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingest.app), base_url="http://ingest") as client:
        began = time.monotonic()
        stats = await run_simulator(
            "http://ingest", token, sim, backfill_hours=0.25, until_ms=TEN_AM, client=client, rate=0
        )
        elapsed = time.monotonic() - began
    assert elapsed >= 0.95
    assert stats.retries == 1
    assert content(ingest.stored) == content(sim.readings_between(TEN_AM - 15 * MIN, TEN_AM))


async def test_run_simulator_stops_while_waiting(cat: QuantityCatalogue, sensors: dict[str, SensorSpec]) -> None:
    ingest = FakeIngest(fail_first=10**6, retry_after="30")
    sim = Simulator(small_registry(sensors), cat, 2, TEN_AM, gas_leak=None, water_burst=None)
    stop = asyncio.Event()

    async def token() -> str:
        return "t"

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingest.app), base_url="http://ingest") as client:
        task = asyncio.create_task(
            run_simulator("http://ingest", token, sim, backfill_hours=1, stop_event=stop, client=client, rate=0)
        )
        await asyncio.sleep(0.3)
        stop.set()
        stats = await asyncio.wait_for(task, timeout=5)
    assert stats.sent == 0 and stats.failed > 0 and stats.retries >= 1
    assert not ingest.stored
