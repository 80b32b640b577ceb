"""Sensor simulator: plausible readings for the sensors of a registry, and a client that posts them.

Generation is pure: :class:`Simulator` computes every reading from (seed, sensor, device time) through a
keyed hash, so the same seed gives the same readings whatever the call pattern (live ticks, backfill,
tests). What it models:

- daily cycles: water demand peaks in the morning and evening, night minimum flow around 03:00–04:00
  local time (pressure moves opposite to demand); gas demand likewise; traffic loads bridges and tunnels;
  heating supply temperature follows a heating curve of the outdoor temperature (season, day, weather);
  drainage levels and road ponding follow rain events (city-wide, seeded, ~1 day in 4);
- noise, slow drifts, occasional dropouts (a sensor goes silent for 15–90 minutes), suspect and bad
  quality flags (bad readings are deliberately out of the physical range), maintenance windows,
  occasional opened manhole covers;
- two scripted incidents at configurable times after ``start_ms``: a gas leak (CH4 in an underground
  space next to a gas main climbs through the IV→I thresholds within minutes, the main's pressure
  deviates from its setpoint) and a water-main burst (pressure drops on the burst segment and, less, on
  its neighbours; flow at nearby DMA inlets spikes). Sensors touched by an incident report every 10 s
  during it and are spared dropouts and quality flags, so the incident is seen whole.

Neighbours of a burst are the nearest pressure sensors within a radius: the registry carries no network
topology yet (the assets service will).

:func:`run_simulator` posts the readings to ingest's ``POST /v1/readings`` in batches, honours 503
``Retry-After`` by resending the same batch (safe: ingest is idempotent), can backfill the last hours
first, and logs counters every few seconds. Device times follow ``start_ms + elapsed × speed``: with
``speed > 1`` they run ahead of the wall clock (ingest may reject them as in the future).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from lifeline.kit.catalogue import Quantity, QuantityCatalogue, SensorSpec, load_quantities, load_sensors

__all__ = [
    "Faults",
    "GasLeak",
    "Incident",
    "Simulator",
    "SimulatorStats",
    "WaterBurst",
    "run_simulator",
    "sample_sensors",
    "sample_sensors_path",
]

log = logging.getLogger("lifeline.launcher.simulator")

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
YEAR_MS = 365.2425 * DAY_MS
# Reference date for slow drifts (creep, settlement): 2024-01-01T00:00:00Z.
DRIFT_EPOCH_MS = 1_704_067_200_000
SAMPLE_REGISTRY = "data/sensors-340100.csv"


def sample_sensors_path() -> Path:
    """Path of the packaged sample census of Hefei (340100)."""
    return Path(str(resources.files("lifeline.launcher").joinpath(SAMPLE_REGISTRY)))


def sample_sensors(catalogue: QuantityCatalogue | None = None) -> dict[str, SensorSpec]:
    """The packaged sample census of Hefei, validated against ``catalogue``."""
    with resources.as_file(resources.files("lifeline.launcher").joinpath(SAMPLE_REGISTRY)) as path:
        return load_sensors(path, catalogue)


# ───────────────────────────────────────── configuration ─────────────────────────────────────────


@dataclass(frozen=True)
class GasLeak:
    """Scripted gas leak: CH4 in an underground space rises through every level, the main's pressure sags.

    Sensors default to the CH4 sensor closest to a gas-pressure sensor, and that pressure sensor.
    """

    start_s: float = 300.0
    ch4_sensor: str | None = None
    pressure_sensor: str | None = None
    ramp_s: float = 900.0
    hold_s: float = 1800.0
    recover_s: float = 600.0
    peak_lel: float = 70.0
    pressure_deviation_pct: float = 25.0
    fast_interval_s: float = 10.0


@dataclass(frozen=True)
class WaterBurst:
    """Scripted water-main burst: pressure drop on a segment and its neighbours, flow spike nearby.

    The segment defaults to the pressure sensor with the most pressure sensors within ``radius_m``.
    """

    start_s: float = 900.0
    pressure_sensor: str | None = None
    neighbours: tuple[str, ...] | None = None
    radius_m: float = 2500.0
    max_neighbours: int = 4
    drop_pct: float = 45.0
    flow_rise_pct: float = 150.0
    onset_s: float = 60.0
    duration_s: float = 5400.0
    recover_s: float = 900.0
    fast_interval_s: float = 10.0


@dataclass(frozen=True)
class Faults:
    """How often sensors misbehave (set rates to 0 for a clean run)."""

    dropout_rate: float = 0.02  # chance per sensor and 6-hour block of going silent
    dropout_min_s: float = 900.0
    dropout_max_s: float = 5400.0
    suspect_rate: float = 0.003  # per reading
    bad_rate: float = 0.0007  # per reading; value deliberately outside the physical range
    maintenance_rate: float = 0.01  # chance per sensor and day of a maintenance window
    maintenance_s: float = 1800.0
    cover_open_rate: float = 0.02  # chance per manhole cover and day of being opened for a while


@dataclass(frozen=True)
class Incident:
    """A resolved scripted incident: when, which sensor first, and how strongly each sensor is affected."""

    kind: str
    start_ms: int
    peak_ms: int
    end_ms: int
    primary: str
    affected: Mapping[str, float]
    fast_interval_ms: int

    def active(self, t_ms: int) -> bool:
        """True while the incident changes readings."""
        return self.start_ms <= t_ms < self.end_ms


# ───────────────────────────────────────── hashing helpers ─────────────────────────────────────────

_U64 = float(2**64)


def _key(seed: int, name: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=32).digest()


@functools.lru_cache(maxsize=1 << 17)
def _u(key: bytes, tag: str, n: int | str) -> float:
    """Uniform in [0, 1), a pure function of (key, tag, n)."""
    digest = hashlib.blake2b(f"{tag}:{n}".encode(), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "little") / _U64


@functools.lru_cache(maxsize=1 << 17)
def _g(key: bytes, tag: str, n: int | str) -> float:
    """Standard normal, a pure function of (key, tag, n)."""
    digest = hashlib.blake2b(f"{tag}:{n}".encode(), key=key, digest_size=16).digest()
    a, b = struct.unpack("<QQ", digest)
    u1 = (a + 1) / (_U64 + 1)
    u2 = b / _U64
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _draw(key: bytes, t_ms: int) -> tuple[float, float, float, float]:
    """Per-reading randomness in one hash: (uniform, normal, normal, uniform)."""
    a, b, c, d = struct.unpack("<QQQQ", hashlib.blake2b(b"%d" % t_ms, key=key, digest_size=32).digest())
    r = math.sqrt(-2.0 * math.log((a + 1) / (_U64 + 1)))
    phi = 2.0 * math.pi * b / _U64
    return c / _U64, r * math.cos(phi), r * math.sin(phi), d / _U64


def _smooth(key: bytes, tag: str, t_ms: float, period_ms: float) -> float:
    """Smooth noise (~N(0, 0.7)) varying on the scale of ``period_ms``."""
    x = t_ms / period_ms
    k = math.floor(x)
    f = x - k
    w = (1 - math.cos(math.pi * f)) / 2
    return _g(key, tag, k) * (1 - w) + _g(key, tag, k + 1) * w


def _bump(h: float, centre: float, width: float) -> float:
    d = abs(h - centre) % 24.0
    d = min(d, 24.0 - d)
    return math.exp(-((d / width) ** 2))


def _water_demand(h: float) -> float:
    """Relative water demand by local hour: ~0.33 at 03:30, ~1.27 at 07:30, ~1.1 at 19:30."""
    return 0.32 + 0.95 * _bump(h, 7.5, 1.6) + 0.45 * _bump(h, 12.0, 1.4) + 0.8 * _bump(h, 19.5, 2.2)


def _traffic(h: float) -> float:
    """Relative road traffic by local hour (0.15 at night, peaks ~1.1 at 08:00 and 17:45)."""
    day = 1 / (1 + math.exp(-(h - 6.5) * 2)) / (1 + math.exp((h - 22.5) * 2))
    return 0.15 + 0.55 * day + 0.4 * _bump(h, 8.0, 1.2) + 0.4 * _bump(h, 17.75, 1.5)


def _distance_m(a: SensorSpec, b: SensorSpec) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


# ───────────────────────────────────────── the simulator ─────────────────────────────────────────


@dataclass
class _Sensor:
    spec: SensorSpec
    quantity: Quantity
    key: bytes
    lo: float
    hi: float
    interval_ms: int
    phase_ms: int
    decimals: int
    to_a: float  # value in the sensor's unit = to_a + to_b × canonical value
    to_b: float
    lo_u: float
    hi_u: float
    p: dict[str, float] = field(default_factory=dict)
    fast: list[tuple[int, int, int]] = field(default_factory=list)  # (from, to, interval) during incidents
    exempt: list[tuple[int, int]] = field(default_factory=list)  # no faults in these windows


class Simulator:
    """Deterministic readings for a registry's active sensors (see the module docstring)."""

    def __init__(
        self,
        sensors: Mapping[str, SensorSpec] | Iterable[SensorSpec],
        catalogue: QuantityCatalogue,
        seed: int = 0,
        start_ms: int | None = None,
        speed: float = 1.0,
        *,
        gas_leak: GasLeak | None = GasLeak(),
        water_burst: WaterBurst | None = WaterBurst(),
        faults: Faults = Faults(),
        utc_offset_h: float = 8.0,
    ) -> None:
        specs = list(sensors.values()) if isinstance(sensors, Mapping) else list(sensors)
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.catalogue = catalogue
        self.seed = seed
        self.start_ms = int(start_ms if start_ms is not None else time.time() * 1000)
        self.speed = float(speed)
        self.faults = faults
        self.offset_ms = int(utc_offset_h * HOUR_MS)
        self._city = _key(seed, "<city>")
        self._rain_cache: dict[int, tuple[int, int, float] | None] = {}
        self.specs: dict[str, SensorSpec] = {s.sensor_id: s for s in specs}
        self._sensors: dict[str, _Sensor] = {}
        for spec in sorted(specs, key=lambda s: s.sensor_id):
            if spec.active:
                self._sensors[spec.sensor_id] = self._prepare(spec)
        self.incidents: dict[str, Incident] = {}
        if gas_leak is not None:
            self._plan_gas_leak(gas_leak)
        if water_burst is not None:
            self._plan_water_burst(water_burst)
        for inc in self.incidents.values():
            for sid in inc.affected:
                s = self._sensors[sid]
                s.fast.append((inc.start_ms, inc.end_ms, inc.fast_interval_ms))
                s.exempt.append((inc.start_ms - 10 * MINUTE_MS, inc.end_ms + 10 * MINUTE_MS))

    # ── set-up ──

    def _prepare(self, spec: SensorSpec) -> _Sensor:
        q = self.catalogue.get(spec.quantity)
        key = _key(self.seed, spec.sensor_id)
        lo, hi = self.catalogue.sensor_range(spec)
        span_unit = abs(q.to_unit(hi, spec.unit) - q.to_unit(lo, spec.unit))
        decimals = max(0, min(6, 5 - math.floor(math.log10(span_unit))))
        interval_ms = spec.interval_s * SECOND_MS
        phase_ms = int(_u(key, "phase", 0) * interval_ms) // SECOND_MS * SECOND_MS
        to_a = q.to_unit(0.0, spec.unit)
        to_b = q.to_unit(1.0, spec.unit) - to_a
        lo_u, hi_u = sorted((to_a + to_b * lo, to_a + to_b * hi))
        s = _Sensor(spec, q, key, lo, hi, interval_ms, phase_ms, decimals, to_a, to_b, lo_u, hi_u)

        def r(name: str, a: float, b: float) -> None:
            s.p[name] = a + (b - a) * _u(key, "param", name)

        code = q.code
        # A registry's setpoint/baseline (the census gives pressure sensors one) is what the sensor runs
        # around, so alerts' relative rules see what the sensor's operator would: normal, then the incident.
        if code == "gas.pressure":
            s.p["setpoint"] = (
                spec.setpoint
                if spec.setpoint is not None
                else [100.0, 200.0, 300.0, 350.0][int(_u(key, "param", "sp") * 4)]
            )
        elif code in ("gas.ch4", "utility_tunnel.ch4"):
            r("bg", 0.1, 1.2)
        elif code == "water.pressure":
            if spec.baseline is not None:
                s.p["p0"] = spec.baseline
            else:
                r("p0", 0.28, 0.45)
        elif code in ("water.flow", "water.night_min_flow"):
            # Per facility: a DMA's inlet flow and its night minimum come from the same meter.
            s.p["q0"] = 80.0 + 820.0 * _u(_key(self.seed, "facility:" + spec.facility_code), "param", "q0")
        elif code == "water.turbidity":
            r("b", 0.12, 0.35)
        elif code == "water.chlorine":
            r("b", 0.3, 0.9)
        elif code == "water.ph":
            r("b", 7.1, 7.7)
        elif code == "water.leak_noise":
            r("b", 18.0, 32.0)
        elif code == "drainage.ponding":
            r("cap", 8.0, 20.0)
            r("k", 0.6, 1.5)
        elif code == "drainage.pipe_level":
            r("base", 15.0, 35.0)
            r("k", 0.8, 2.0)
        elif code == "drainage.water_level":
            r("base", 4.0, 8.0)
        elif code == "drainage.rain":
            r("f", 0.8, 1.2)
        elif code == "heating.supply_temp":
            r("b", -3.0, 3.0)
        elif code == "heating.supply_pressure":
            r("p0", 0.5, 0.9)
        elif code == "bridge.deflection":
            r("b", 5.0, 25.0)
            r("creep", 0.0, 0.4)
        elif code == "bridge.strain":
            r("b", 40.0, 180.0)
        elif code == "bridge.displacement":
            r("b", -20.0, 20.0)
        elif code == "bridge.crack_width":
            r("b", 0.06, 0.16)
        elif code == "bridge.bearing_reaction":
            r("b", 1200.0, 4500.0)
        elif code == "bridge.modal_freq":
            r("b", 1.8, 6.5)
        elif code == "tunnel.convergence":
            r("b", -5.0, 5.0)
        elif code == "utility_tunnel.h2s":
            r("b", 0.05, 0.5)
        elif code == "road.settlement":
            r("b", 0.0, 4.0)
            r("rate", 0.002, 0.01)
        elif code == "road.cover_tilt":
            r("b", 0.1, 1.2)
        elif code == "building.tilt":
            r("b", 0.3, 2.2)
        elif code == "building.crack_width":
            r("b", 0.1, 0.8)
        return s

    def _of(self, code: str) -> list[_Sensor]:
        return [s for s in self._sensors.values() if s.quantity.code == code]

    def _plan_gas_leak(self, cfg: GasLeak) -> None:
        ch4s, pressures = self._of("gas.ch4"), self._of("gas.pressure")
        ch4 = self._sensors.get(cfg.ch4_sensor) if cfg.ch4_sensor else None
        pressure = self._sensors.get(cfg.pressure_sensor) if cfg.pressure_sensor else None
        if cfg.ch4_sensor and ch4 is None:
            raise ValueError(f"gas leak: no active sensor {cfg.ch4_sensor!r}")
        if cfg.pressure_sensor and pressure is None:
            raise ValueError(f"gas leak: no active sensor {cfg.pressure_sensor!r}")
        if ch4 is None:
            if not ch4s:
                log.warning("gas leak not scripted: no active gas.ch4 sensor")
                return
            if pressure is not None:
                anchor = pressure.spec
                ch4 = min(ch4s, key=lambda c: (_distance_m(c.spec, anchor), c.spec.sensor_id))
            elif pressures:
                ch4 = min(
                    ch4s,
                    key=lambda c: (min(_distance_m(c.spec, p.spec) for p in pressures), c.spec.sensor_id),
                )
            else:
                ch4 = ch4s[0]
        if pressure is None and pressures:
            pressure = min(pressures, key=lambda p: (_distance_m(p.spec, ch4.spec), p.spec.sensor_id))
        start = self.start_ms + int(cfg.start_s * SECOND_MS)
        peak = start + int(cfg.ramp_s * SECOND_MS)
        end = peak + int((cfg.hold_s + cfg.recover_s) * SECOND_MS)
        affected = {ch4.spec.sensor_id: 1.0}
        if pressure is not None:
            affected[pressure.spec.sensor_id] = 1.0
        self.incidents["gas_leak"] = Incident(
            "gas_leak", start, peak, end, ch4.spec.sensor_id, affected, int(cfg.fast_interval_s * SECOND_MS)
        )
        self._gas = cfg

    def _plan_water_burst(self, cfg: WaterBurst) -> None:
        pressures = self._of("water.pressure")
        if cfg.pressure_sensor:
            primary = self._sensors.get(cfg.pressure_sensor)
            if primary is None:
                raise ValueError(f"water burst: no active sensor {cfg.pressure_sensor!r}")
        elif pressures:

            def crowd(p: _Sensor) -> int:
                return sum(1 for o in pressures if o is not p and _distance_m(p.spec, o.spec) <= cfg.radius_m)

            primary = min(pressures, key=lambda p: (-crowd(p), p.spec.sensor_id))
        else:
            log.warning("water burst not scripted: no active water.pressure sensor")
            return
        affected: dict[str, float] = {primary.spec.sensor_id: 1.0}
        if cfg.neighbours is not None:
            for sid in cfg.neighbours:
                if sid not in self._sensors:
                    raise ValueError(f"water burst: no active sensor {sid!r}")
                d = _distance_m(primary.spec, self._sensors[sid].spec)
                affected[sid] = max(0.15, 0.7 * (1 - d / (1.5 * cfg.radius_m)))
        else:
            near = sorted(
                (
                    (_distance_m(primary.spec, o.spec), o.spec.sensor_id)
                    for o in pressures
                    if o is not primary and _distance_m(primary.spec, o.spec) <= cfg.radius_m
                ),
            )[: cfg.max_neighbours]
            for d, sid in near:
                affected[sid] = max(0.15, 0.7 * (1 - d / (1.5 * cfg.radius_m)))
        # Flow at DMA inlets and the other network sensors close to the burst.
        flows = self._of("water.flow")
        if flows:
            nearest = min(flows, key=lambda f: (_distance_m(primary.spec, f.spec), f.spec.sensor_id))
            for f in flows:
                d = _distance_m(primary.spec, f.spec)
                if f is nearest or d <= 1.5 * cfg.radius_m:
                    affected[f.spec.sensor_id] = min(1.0, max(0.3, 1 - d / (3 * cfg.radius_m)))
        for code in ("water.night_min_flow", "water.leak_noise", "water.leak_flag", "water.turbidity"):
            for o in self._of(code):
                d = _distance_m(primary.spec, o.spec)
                if d <= cfg.radius_m:
                    affected[o.spec.sensor_id] = max(0.2, 1 - d / cfg.radius_m)
        start = self.start_ms + int(cfg.start_s * SECOND_MS)
        peak = start + int(cfg.onset_s * SECOND_MS)
        end = start + int((cfg.duration_s + cfg.recover_s) * SECOND_MS)
        self.incidents["water_burst"] = Incident(
            "water_burst",
            start,
            peak,
            end,
            primary.spec.sensor_id,
            affected,
            int(cfg.fast_interval_s * SECOND_MS),
        )
        self._burst = cfg

    # ── time ──

    def sim_time(self, elapsed_s: float) -> int:
        """Device time (ms) after ``elapsed_s`` wall-clock seconds, accelerated by ``speed``."""
        return self.start_ms + int(elapsed_s * SECOND_MS * self.speed)

    def local_hour(self, t_ms: float) -> float:
        """Hour of the local day (UTC+8 by default) at ``t_ms``."""
        return ((t_ms + self.offset_ms) % DAY_MS) / HOUR_MS

    def _local_day(self, t_ms: float) -> int:
        return int((t_ms + self.offset_ms) // DAY_MS)

    # ── city-wide weather ──

    def outdoor_temp(self, t_ms: float, *, daily: bool = True) -> float:
        """Outdoor temperature (°C) of Hefei: season, day cycle and weather."""
        year = ((t_ms / DAY_MS) % 365.2425) / 365.2425
        seasonal = 16.5 - 13.0 * math.cos(2 * math.pi * (year - 15 / 365))
        weather = 2.5 * _smooth(self._city, "wx", t_ms, 12 * HOUR_MS)
        diurnal = 4.0 * math.cos(2 * math.pi * (self.local_hour(t_ms) - 14.5) / 24) if daily else 0.0
        return seasonal + weather + diurnal

    def _rain_event(self, day: int) -> tuple[int, int, float] | None:
        if day not in self._rain_cache:
            month = int((day % 365.2425) / 30.44)
            p = 0.45 if month in (5, 6) else 0.25  # plum rains in June–July
            if _u(self._city, "rain", day) >= p:
                self._rain_cache[day] = None
            else:
                start = day * DAY_MS - self.offset_ms + int(_u(self._city, "rain-start", day) * DAY_MS)
                dur = int((1 + 4 * _u(self._city, "rain-dur", day)) * HOUR_MS)
                peak = 2.0 + 58.0 * _u(self._city, "rain-peak", day) ** 2
                self._rain_cache[day] = (start, dur, peak)
        return self._rain_cache[day]

    def rain(self, t_ms: float) -> float:
        """City-wide rainfall intensity (mm/h) at ``t_ms``."""
        total = 0.0
        d = self._local_day(t_ms)
        for day in (d - 1, d):
            ev = self._rain_event(day)
            if ev is not None and ev[0] <= t_ms < ev[0] + ev[1]:
                x = (t_ms - ev[0]) / ev[1]
                total += ev[2] * math.sin(math.pi * x) ** 1.5
        return total

    def _rained_within(self, t_ms: float, window_ms: float) -> bool:
        d = self._local_day(t_ms)
        for day in range(self._local_day(t_ms - window_ms) - 1, d + 1):
            ev = self._rain_event(day)
            if ev is not None and ev[0] < t_ms and ev[0] + ev[1] > t_ms - window_ms:
                return True
        return False

    def _rain_response(self, t_ms: float, tau_ms: float, window_ms: float, step_ms: float, cap: float) -> float:
        """Sum of rain above ``cap`` over the past window, exponentially forgotten (mm)."""
        if not self._rained_within(t_ms, window_ms):
            return 0.0
        total = 0.0
        n = int(window_ms // step_ms)
        for i in range(n + 1):
            lag = i * step_ms
            excess = self.rain(t_ms - lag) - cap
            if excess > 0:
                total += excess * math.exp(-lag / tau_ms) * step_ms / HOUR_MS
        return total

    # ── faults ──

    def _exempt(self, s: _Sensor, t: int) -> bool:
        return bool(s.exempt) and any(a <= t < b for a, b in s.exempt)

    def silent(self, sensor_id: str, t_ms: int) -> bool:
        """True if the sensor is in a dropout at ``t_ms`` (sends nothing)."""
        return self._silent(self._sensors[sensor_id], t_ms)

    def _silent(self, s: _Sensor, t_ms: int) -> bool:
        f = self.faults
        if f.dropout_rate <= 0 or self._exempt(s, t_ms):
            return False
        block_ms = 6 * HOUR_MS
        b = t_ms // block_ms
        for blk in (b - 1, b):
            if _u(s.key, "drop", blk) < f.dropout_rate:
                start = blk * block_ms + int(_u(s.key, "drop-start", blk) * block_ms)
                dur = (f.dropout_min_s + (f.dropout_max_s - f.dropout_min_s) * _u(s.key, "drop-dur", blk)) * 1000
                if start <= t_ms < start + dur:
                    return True
        return False

    def _in_maintenance(self, s: _Sensor, t: int) -> bool:
        f = self.faults
        if f.maintenance_rate <= 0:
            return False
        d = self._local_day(t)
        if _u(s.key, "mnt", d) >= f.maintenance_rate:
            return False
        start = d * DAY_MS - self.offset_ms + int((9 + 7 * _u(s.key, "mnt-start", d)) * HOUR_MS)
        return start <= t < start + f.maintenance_s * 1000

    def _cover_open(self, facility: str, t: int) -> bool:
        f = self.faults
        if f.cover_open_rate <= 0:
            return False
        d = self._local_day(t)
        for day in (d - 1, d):
            if _u(self._city, f"cover:{facility}", day) < f.cover_open_rate:
                start = day * DAY_MS - self.offset_ms + int(_u(self._city, f"cover-start:{facility}", day) * DAY_MS)
                dur = (10 + 30 * _u(self._city, f"cover-dur:{facility}", day)) * MINUTE_MS
                if start <= t < start + dur:
                    return True
        return False

    # ── incident shapes ──

    def _gas_shape(self, t: int) -> float:
        """0..1: how far the gas leak has developed at ``t``."""
        inc = self.incidents.get("gas_leak")
        if inc is None or not inc.active(t):
            return 0.0
        cfg = self._gas
        e = (t - inc.start_ms) / SECOND_MS
        if e < cfg.ramp_s:
            return (e / cfg.ramp_s) ** 2
        if e < cfg.ramp_s + cfg.hold_s:
            return 1.0
        return max(0.0, 1 - (e - cfg.ramp_s - cfg.hold_s) / cfg.recover_s)

    def _burst_shape(self, t: float) -> float:
        """0..1: how strongly the burst acts at ``t``."""
        inc = self.incidents.get("water_burst")
        if inc is None or not inc.active(int(t)):
            return 0.0
        cfg = self._burst
        e = (t - inc.start_ms) / SECOND_MS
        y = 1 - math.exp(-3 * e / cfg.onset_s)
        if e > cfg.duration_s:
            y *= max(0.0, 1 - (e - cfg.duration_s) / cfg.recover_s)
        return y

    def _burst_weight(self, s: _Sensor) -> float:
        inc = self.incidents.get("water_burst")
        return inc.affected.get(s.spec.sensor_id, 0.0) if inc is not None else 0.0

    # ── values ──

    def _flow(self, s: _Sensor, t: float, n: float | None = None) -> float:
        h = self.local_hour(t)
        v = s.p["q0"] * _water_demand(h) * (1 + 0.04 * _smooth(s.key, "drift", t, 3 * HOUR_MS))
        v *= 1 + 0.015 * (_draw(s.key, int(t))[1] if n is None else n)
        w = self._burst_weight(s)
        if w:
            v *= 1 + self._burst.flow_rise_pct / 100 * w * self._burst_shape(t)
        return v

    def canonical_value(self, sensor_id: str, t_ms: int) -> float:
        """The true-ish value (canonical unit, before quality faults) of a sensor at ``t_ms``."""
        s = self._sensors[sensor_id]
        _, n, m, _ = _draw(s.key, t_ms)
        return min(s.hi, max(s.lo, self._value(s, t_ms, n, m)))

    def _value(self, s: _Sensor, t: int, n: float, m: float) -> float:
        """The value (canonical unit) at ``t``; ``n`` and ``m`` are this reading's white noise."""
        code = s.quantity.code
        p = s.p
        key = s.key
        h = self.local_hour(t)
        if code == "gas.ch4":
            v = p["bg"] + 0.3 * _smooth(key, "drift", t, 2 * HOUR_MS) + 0.1 * n
            shape = self._gas_shape(t)
            if shape and s.spec.sensor_id == self.incidents["gas_leak"].primary:
                v += self._gas.peak_lel * shape * (1 + 0.01 * n)
            return max(0.0, v)
        if code == "gas.pressure":
            demand = _water_demand(h - 0.5)
            v = p["setpoint"] * (1 - 0.015 * (demand - 0.6) + 0.003 * _smooth(key, "drift", t, HOUR_MS))
            v *= 1 + 0.002 * n
            inc = self.incidents.get("gas_leak")
            if inc is not None and s.spec.sensor_id in inc.affected:
                v *= 1 - self._gas.pressure_deviation_pct / 100 * self._gas_shape(t)
            return v
        if code == "water.pressure":
            v = p["p0"] * (1 + 0.06 * (0.7 - _water_demand(h)) + 0.008 * _smooth(key, "drift", t, 2 * HOUR_MS))
            v *= 1 + 0.004 * n
            w = self._burst_weight(s)
            if w:
                v *= 1 - self._burst.drop_pct / 100 * w * self._burst_shape(t)
            return v
        if code == "water.flow":
            return self._flow(s, t, n)
        if code == "water.night_min_flow":
            # Minimum of the last completed 02:00–04:00 window, sampled every 5 minutes.
            day = self._local_day(t) if h >= 4 else self._local_day(t) - 1
            w0 = day * DAY_MS - self.offset_ms + 2 * HOUR_MS
            return min(self._flow(s, w0 + i * 5 * MINUTE_MS) for i in range(25))
        if code == "water.turbidity":
            v = p["b"] + 0.04 * abs(_smooth(key, "drift", t, 3 * HOUR_MS)) + 0.01 * n
            w = self._burst_weight(s)
            if w:
                v += 1.6 * w * self._burst_shape(t - 10 * MINUTE_MS)
            return max(0.02, v)
        if code == "water.chlorine":
            return p["b"] * (1 + 0.08 * _smooth(key, "drift", t, 4 * HOUR_MS) + 0.01 * n)
        if code == "water.ph":
            return p["b"] + 0.05 * _smooth(key, "drift", t, 6 * HOUR_MS) + 0.01 * n
        if code == "water.leak_noise":
            return p["b"] + 1.5 * n + 25 * self._burst_weight(s) * self._burst_shape(t)
        if code == "water.leak_flag":
            return 1.0 if self._burst_weight(s) * self._burst_shape(t) > 0.3 else 0.0
        if code == "drainage.rain":
            r = self.rain(t) * p["f"]
            return max(0.0, r * (1 + 0.1 * n)) if r > 0.05 else 0.0
        if code == "drainage.ponding":
            depth = p["k"] * self._rain_response(t, 45 * MINUTE_MS, 3 * HOUR_MS, 5 * MINUTE_MS, p["cap"])
            return max(0.0, depth + 0.1 * n) if depth > 0.3 else max(0.0, 0.05 * n)
        if code == "drainage.pipe_level":
            dry = 8 * (_water_demand(h - 1) - 0.6)
            wet = p["k"] * self._rain_response(t, 60 * MINUTE_MS, 4 * HOUR_MS, 10 * MINUTE_MS, 0.0)
            return p["base"] + dry + wet + 0.3 * n
        if code == "drainage.water_level":
            wet = 0.05 * self._rain_response(t, 6 * HOUR_MS, 12 * HOUR_MS, 20 * MINUTE_MS, 0.0)
            return p["base"] + 0.2 * _smooth(key, "drift", t, 24 * HOUR_MS) + wet + 0.005 * n
        if code == "heating.supply_temp":
            setpoint = min(90.0, max(45.0, 50 + 1.5 * (15 - self.outdoor_temp(t, daily=False))))
            return setpoint + p["b"] + 0.5 * _smooth(key, "drift", t, HOUR_MS) + 0.25 * n
        if code == "heating.supply_pressure":
            return p["p0"] * (1 + 0.01 * _smooth(key, "drift", t, 2 * HOUR_MS) + 0.003 * n)
        if code.startswith("bridge."):
            temp = self.outdoor_temp(t - 2 * HOUR_MS)
            load = _traffic(h)
            if code == "bridge.deflection":
                creep = p["creep"] * (t - DRIFT_EPOCH_MS) / YEAR_MS
                return p["b"] + creep + 0.15 * (temp - 15) + 1.2 * load * abs(n)
            if code == "bridge.strain":
                return p["b"] + 2.5 * (temp - 15) + 25 * load * abs(n) + 1.5 * m
            if code == "bridge.vibration":
                return 0.005 + 0.06 * load * (0.6 + 0.4 * abs(n))
            if code == "bridge.displacement":
                return p["b"] + 0.8 * (15 - temp) + 0.1 * n
            if code == "bridge.crack_width":
                return max(0.0, p["b"] + 0.002 * (15 - temp) + 0.003 * n)
            if code == "bridge.bearing_reaction":
                return p["b"] * (1 + 0.04 * load * abs(n) + 0.002 * m)
            if code == "bridge.modal_freq":
                return p["b"] * (1 + 0.0015 * (15 - temp) + 0.001 * n)
        if code == "tunnel.co":
            return 3 + 35 * _traffic(h) * (0.7 + 0.3 * abs(n))
        if code == "tunnel.convergence":
            return p["b"] + 0.05 * _smooth(key, "drift", t, 24 * HOUR_MS) + 0.05 * n
        if code == "utility_tunnel.o2":
            return 20.9 + 0.15 * _smooth(key, "drift", t, 3 * HOUR_MS) + 0.03 * n
        if code == "utility_tunnel.h2s":
            return p["b"] + 0.1 * abs(_smooth(key, "drift", t, 2 * HOUR_MS)) + 0.02 * abs(n)
        if code == "utility_tunnel.temperature":
            return 19 + 0.45 * (self.outdoor_temp(t, daily=False) - 16.5) + 0.3 * _smooth(key, "d", t, HOUR_MS)
        if code == "utility_tunnel.ch4":
            return max(0.0, p["bg"] * 0.5 + 0.2 * _smooth(key, "drift", t, 2 * HOUR_MS) + 0.1 * n)
        if code == "road.settlement":
            return p["b"] + p["rate"] * (t - DRIFT_EPOCH_MS) / DAY_MS + 0.15 * n
        if code == "road.cover_tilt":
            if self._cover_open(s.spec.facility_code, t):
                return 30 + 30 * _u(key, "tilt-open", self._local_day(t))
            return max(0.0, p["b"] + 0.05 * n)
        if code == "road.cover_open":
            return 1.0 if self._cover_open(s.spec.facility_code, t) else 0.0
        if code == "building.tilt":
            return max(0.0, p["b"] + 0.05 * math.sin(2 * math.pi * (h - 9) / 24) + 0.02 * n)
        if code == "building.crack_width":
            return max(0.0, p["b"] + 0.001 * (15 - self.outdoor_temp(t)) + 0.005 * n)
        # A quantity this simulator does not model (an operator's own): a quiet value low in its range.
        if s.quantity.kind == "event":
            return s.lo
        return s.lo + (s.hi - s.lo) * (0.2 + 0.01 * _smooth(key, "drift", t, HOUR_MS) + 0.002 * n)

    def _reading(self, s: _Sensor, t: int) -> dict[str, Any]:
        uq, n, m, ux = _draw(s.key, t)
        value = min(s.hi, max(s.lo, self._value(s, t, n, m)))
        quality = "good"
        if not self._exempt(s, t):
            if self._in_maintenance(s, t):
                quality = "maintenance"
            elif uq < self.faults.bad_rate:
                quality = "bad"  # deliberately outside the physical range
                value = s.hi + (s.hi - s.lo) * (0.5 + ux)
            elif uq < self.faults.bad_rate + self.faults.suspect_rate:
                quality = "suspect"
                value = min(s.hi, max(s.lo, value + 0.05 * (s.hi - s.lo) * (2 * ux - 1)))
        out = round(s.to_a + s.to_b * value, s.decimals)
        if quality != "bad":
            # Keep rounding and unit conversion from nudging a value past the range.
            out = min(s.hi_u, max(s.lo_u, out))
        return {
            "sensor_id": s.spec.sensor_id,
            "device_time_ms": t,
            "value": out,
            "unit": s.spec.unit,
            "quality": quality,
        }

    # ── public generation ──

    @property
    def sensor_ids(self) -> list[str]:
        """The active sensors this simulator generates readings for."""
        return list(self._sensors)

    def _times(self, s: _Sensor, start_ms: int, end_ms: int) -> list[int]:
        times: list[int] = []
        t = s.phase_ms + -((s.phase_ms - start_ms) // s.interval_ms) * s.interval_ms  # first tick ≥ start
        while t < end_ms:
            if not (s.fast and any(a <= t < b for a, b, _ in s.fast)):
                times.append(t)
            t += s.interval_ms
        for a, b, step in s.fast:
            lo, hi = max(a, start_ms), min(b, end_ms)
            if lo >= hi:
                continue
            j = math.ceil((lo - a) / step)
            t = a + j * step
            while t < hi:
                times.append(t)
                t += step
        return times

    def readings_between(
        self, start_ms: int, end_ms: int, sensor_ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Readings of all sensors (or ``sensor_ids``) in [start_ms, end_ms), by time then sensor."""
        out: list[dict[str, Any]] = []
        chosen = self._sensors.values() if sensor_ids is None else [self._sensors[sid] for sid in sensor_ids]
        for s in chosen:
            for t in self._times(s, start_ms, end_ms):
                if not self._silent(s, t):
                    out.append(self._reading(s, t))
        out.sort(key=lambda r: (r["device_time_ms"], r["sensor_id"]))
        return out

    def readings_at(self, t_ms: int) -> list[dict[str, Any]]:
        """A snapshot: what every active sensor not in a dropout would read at exactly ``t_ms``."""
        return [self._reading(s, t_ms) for s in self._sensors.values() if not self._silent(s, t_ms)]

    def batches(
        self, start_ms: int, end_ms: int, batch_size: int = 500, window_ms: int = 15 * MINUTE_MS
    ) -> Iterator[list[dict[str, Any]]]:
        """Readings of [start_ms, end_ms) in batches of at most ``batch_size``, generated window by window."""
        buf: list[dict[str, Any]] = []
        w = start_ms
        while w < end_ms:
            buf.extend(self.readings_between(w, min(end_ms, w + window_ms)))
            w += window_ms
            while len(buf) >= batch_size:
                yield buf[:batch_size]
                buf = buf[batch_size:]
        if buf:
            yield buf


# ───────────────────────────────────────── the HTTP client ─────────────────────────────────────────


@dataclass
class SimulatorStats:
    """Counters of a simulator run (readings unless named otherwise)."""

    sent: int = 0  # delivered in a 2xx response
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0  # requests repeated after 503/429/5xx/network errors
    failed: int = 0  # given up (non-retryable answer, or stopped while retrying)
    batches: int = 0  # batches delivered

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return asdict(self)


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``stop`` got set meanwhile."""
    if stop.is_set():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


class _Poster:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        token_provider: Callable[[], Awaitable[str]],
        stats: SimulatorStats,
        stop: asyncio.Event,
        rate: float,
        max_retry_after_s: float,
        log_every_s: float,
    ) -> None:
        self.client = client
        self.url = url
        self.token_provider = token_provider
        self.stats = stats
        self.stop = stop
        self.rate = rate
        self.max_retry_after_s = max_retry_after_s
        self.log_every_s = log_every_s
        loop = asyncio.get_running_loop()
        self._next_send = loop.time()
        self._next_log = loop.time() + log_every_s

    def maybe_log(self, force: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        if force or now >= self._next_log:
            self._next_log = now + self.log_every_s
            log.info(
                "simulator %s",
                " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items()),
                extra={"simulator": self.stats.as_dict()},
            )

    async def post(self, batch: list[dict[str, Any]]) -> bool:
        """Deliver one batch, retrying what is safe to retry; False if given up."""
        loop = asyncio.get_running_loop()
        if self.rate > 0 and await _sleep_or_stop(self.stop, self._next_send - loop.time()):
            self.stats.failed += len(batch)
            return False
        backoff = 0.5
        unauthorised = 0
        body = {"readings": batch}
        while True:
            wait: float | None = None
            try:
                token = await self.token_provider()
                resp = await self.client.post(self.url, json=body, headers={"Authorization": f"Bearer {token}"})
            except httpx.TransportError as exc:
                log.warning("simulator: %s posting %d readings; retrying", type(exc).__name__, len(batch))
                wait = backoff
            else:
                if resp.is_success:
                    self._count(resp, len(batch))
                    break
                if resp.status_code in (429, 503):
                    hinted = _retry_after_s(resp.headers.get("Retry-After"))
                    wait = min(self.max_retry_after_s, hinted if hinted is not None else backoff)
                elif resp.status_code in (500, 502, 504):
                    wait = backoff
                elif resp.status_code == 401 and unauthorised < 2:
                    unauthorised += 1  # the provider may hand out a fresh token next time
                    wait = 0.0
                else:
                    log.error(
                        "simulator: %d readings refused with HTTP %d: %s",
                        len(batch),
                        resp.status_code,
                        resp.text[:500],
                    )
                    self.stats.failed += len(batch)
                    return False
            self.stats.retries += 1
            backoff = min(30.0, backoff * 2)
            self.maybe_log()
            if await _sleep_or_stop(self.stop, wait):
                self.stats.failed += len(batch)
                return False
        if self.rate > 0:
            self._next_send = max(self._next_send, loop.time()) + len(batch) / self.rate
        self.maybe_log()
        return True

    def _count(self, resp: httpx.Response, n: int) -> None:
        self.stats.sent += n
        self.stats.batches += 1
        try:
            data = resp.json()
            self.stats.accepted += int(data.get("accepted", 0))
            self.stats.duplicates += int(data.get("duplicates", 0))
            self.stats.rejected += int(data.get("rejected", 0))
        except (ValueError, AttributeError, TypeError):
            log.warning("simulator: unreadable response body for %d readings", n)


async def run_simulator(
    base_url: str,
    token_provider: Callable[[], Awaitable[str]],
    sim: Simulator,
    *,
    batch_size: int = 500,
    rate: float = 5000.0,
    stop_event: asyncio.Event | None = None,
    backfill_hours: float = 0.0,
    until_ms: int | None = None,
    tick_s: float = 1.0,
    log_every_s: float = 5.0,
    max_retry_after_s: float = 60.0,
    client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SimulatorStats:
    """Post the simulator's readings to ``{base_url}/v1/readings`` until stopped (or ``until_ms``).

    Backfills ``[start_ms − backfill_hours, start_ms)`` first, then follows device time
    ``start_ms + elapsed × speed``. ``rate`` caps readings per wall-clock second (0: no cap).
    """
    stop = stop_event or asyncio.Event()
    stats = SimulatorStats()
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
    anchor = clock()
    url = base_url.rstrip("/") + "/v1/readings"
    try:
        poster = _Poster(http, url, token_provider, stats, stop, rate, max_retry_after_s, log_every_s)
        if backfill_hours > 0:
            begin = sim.start_ms - int(backfill_hours * HOUR_MS)
            log.info("simulator: backfilling %.1f h of history", backfill_hours)
            for batch in sim.batches(begin, sim.start_ms, batch_size):
                if stop.is_set():
                    break
                await poster.post(batch)
        cursor = sim.start_ms
        while not stop.is_set():
            now = sim.sim_time(clock() - anchor)
            if until_ms is not None:
                now = min(now, until_ms)
            if now > cursor:
                for batch in sim.batches(cursor, now, batch_size):
                    if stop.is_set():
                        break
                    await poster.post(batch)
                cursor = now
            if until_ms is not None and cursor >= until_ms:
                break
            poster.maybe_log()
            await _sleep_or_stop(stop, tick_s)
        poster.maybe_log(force=True)
    finally:
        if own_client:
            await http.aclose()
    return stats


# ───────────────────────────────────────── command line ─────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    """``python -m lifeline.launcher.simulator``: post simulated readings to an ingest service."""
    ap = argparse.ArgumentParser(description="Post simulated sensor readings to a Lifeline ingest service.")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="ingest base URL")
    ap.add_argument("--token", default=os.environ.get("LIFELINE_SIM_TOKEN", ""), help="bearer token")
    ap.add_argument("--sensors", type=Path, help="sensor registry CSV (default: the Hefei sample)")
    ap.add_argument("--quantities", type=Path, help="operator quantity catalogue (overlays the default)")
    ap.add_argument("--seed", type=int, default=340100)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--backfill-hours", type=float, default=0.0)
    ap.add_argument("--gas-leak-at", type=float, default=300.0, help="seconds after start (<0: none)")
    ap.add_argument("--burst-at", type=float, default=900.0, help="seconds after start (<0: none)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--rate", type=float, default=5000.0, help="max readings per second")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    catalogue = load_quantities(args.quantities)
    sensors = load_sensors(args.sensors, catalogue) if args.sensors else sample_sensors(catalogue)
    sim = Simulator(
        sensors,
        catalogue,
        args.seed,
        int(time.time() * 1000),
        args.speed,
        gas_leak=GasLeak(start_s=args.gas_leak_at) if args.gas_leak_at >= 0 else None,
        water_burst=WaterBurst(start_s=args.burst_at) if args.burst_at >= 0 else None,
    )
    for inc in sim.incidents.values():
        log.info("scripted %s at +%ds on %s", inc.kind, (inc.start_ms - sim.start_ms) // 1000, inc.primary)

    async def token() -> str:
        return str(args.token)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_simulator(
            args.url,
            token,
            sim,
            batch_size=args.batch_size,
            rate=args.rate,
            stop_event=stop,
            backfill_hours=args.backfill_hours,
        )

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
