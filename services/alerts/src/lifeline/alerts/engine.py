"""The rule engine: readings in, alert changes out, in memory and without I/O.

Every rule applied to a subject (a sensor, or a facility for composite rules) has a ``RuleState`` keyed
by its fingerprint ``<rule id>/<subject>``: the firing level, when a pending `for` window started and
when a clear window started. ``evaluate`` moves those states and returns what changed (raised, level
changed, cleared, repeated breach); the service writes the changed states, the alert changes and their
events in one transaction. Most readings change nothing and cost no write.

Within a batch the engine keeps an undo log, so a transaction that fails puts the states back as they
were and the redelivered readings are evaluated again from the same starting point. A reading no newer
than the newest evaluated reading of its sensor is skipped: out-of-order readings never flip a state,
and a redelivered reading is not counted twice.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Literal

from lifeline.kit.catalogue import Level, QuantityCatalogue, ThresholdRule, UnknownQuantityError

from .policy import Policy

# Measures a condition may compare: the catalogue's and the alert-only ones.
MEASURES = (
    "value",
    "deviation_pct",
    "drop_pct",
    "rise_pct",
    "rate_per_minute",
    "rate_per_hour",
    "rate_per_day",
    "rate_per_year",
    "baseline_deviation_pct",
)
RATE_UNIT_MS = {
    "rate_per_minute": 60_000,
    "rate_per_hour": 3_600_000,
    "rate_per_day": 86_400_000,
    "rate_per_year": 365 * 86_400_000,
}
# A rate is measured over at most a day of readings (a yearly growth is extrapolated from it).
_MAX_RATE_HORIZON_MS = 86_400_000
_HOUR_MS = 3_600_000
SEVERITY = {Level.IV: 1, Level.III: 2, Level.II: 3, Level.I: 4}

RuleKind = Literal["threshold", "no_data", "composite"]
Origin = Literal["catalogue", "assets", "api"]
ChangeKind = Literal["raised", "level_changed", "cleared", "breach"]


def more_severe(a: Level | None, b: Level | None) -> bool:
    """True if level ``a`` is more severe than ``b`` (anything beats None)."""
    return a is not None and (b is None or SEVERITY[a] > SEVERITY[b])


@dataclass(frozen=True, slots=True)
class Window:
    kind: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class ThresholdOverride:
    """Assets' thresholds of a sensor or facility for one quantity and measure."""

    quantity: str
    measure: str
    rule: ThresholdRule


@dataclass(frozen=True, slots=True)
class FacilityContext:
    code: str
    kind: str = ""
    region: str = ""
    unit_id: str = ""
    thresholds: tuple[ThresholdOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class SensorContext:
    """What alerts knows of a sensor, from assets' events."""

    sensor_id: str
    quantity: str
    facility_code: str
    region: str
    active: bool = True
    setpoint: float | None = None
    baseline: float | None = None
    windows: tuple[Window, ...] = ()
    thresholds: tuple[ThresholdOverride, ...] = ()

    def in_window(self, t_ms: int) -> bool:
        return any(w.start_ms <= t_ms < w.end_ms for w in self.windows)


@dataclass(frozen=True, slots=True)
class Condition:
    """One comparison: a measure of a quantity's readings against per-level thresholds."""

    quantity: str
    measure: str
    direction: str
    # Most severe level first: (level, low, high); above compares with low, below with high.
    steps: tuple[tuple[Level, float, float], ...]
    clear_margin: float = 0.0
    baseline_days: int = 7

    @classmethod
    def from_threshold(
        cls, quantity: str, measure: str, rule: ThresholdRule, *, margin_pct: float, baseline_days: int
    ) -> Condition:
        steps: list[tuple[Level, float, float]] = []
        for level, limit in reversed(rule.ordered()):
            if isinstance(limit, tuple):
                steps.append((level, limit[0], limit[1]))
            else:
                steps.append((level, limit, limit))
        lo, hi = steps[-1][1], steps[-1][2]
        scale = (hi - lo) / 2 if rule.direction == "outside" else abs(lo)
        return cls(
            quantity=quantity,
            measure=measure,
            direction=str(rule.direction),
            steps=tuple(steps),
            clear_margin=scale * margin_pct / 100.0,
            baseline_days=baseline_days,
        )

    def level(self, m: float, margin: float = 0.0) -> Level | None:
        """The most severe level ``m`` reaches; with a margin, the level it still holds (hysteresis)."""
        d = self.direction
        for level, lo, hi in self.steps:
            if d == "above":
                if m >= lo - margin:
                    return level
            elif d == "below":
                if m <= hi + margin:
                    return level
            elif m < lo + margin or m > hi - margin:
                return level
        return None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    id: str
    name: str
    kind: RuleKind
    origin: Origin
    conditions: tuple[Condition, ...] = ()
    for_ms: int = 0
    clear_for_ms: int = 0
    level: Level | None = None
    region: str = ""
    facility_kind: str = ""
    facility_code: str = ""
    sensor_id: str = ""
    enabled: bool = True

    def matches(self, sensor: SensorContext, facility: FacilityContext | None) -> bool:
        """Whether the rule's scope covers the sensor (empty scope fields match everything)."""
        if self.sensor_id and self.sensor_id != sensor.sensor_id:
            return False
        if self.facility_code and self.facility_code != sensor.facility_code:
            return False
        if self.facility_kind and (facility is None or facility.kind != self.facility_kind):
            return False
        return not self.region or sensor.region.startswith(_prefix(self.region))

    @property
    def specificity(self) -> int:
        return (
            8 * bool(self.sensor_id) + 4 * bool(self.facility_code) + 2 * bool(self.facility_kind) + bool(self.region)
        )


def _prefix(region: str) -> str:
    if region == "100000":
        return ""
    return region.rstrip("0") if region.endswith("00") else region


@dataclass(slots=True)
class RuleState:
    fingerprint: str
    rule_id: str
    subject: str
    kind: RuleKind = "threshold"
    firing: Level | None = None
    pending_since: int | None = None
    clear_since: int | None = None
    last_ms: int = 0
    alert_id: str | None = None

    def copy(self) -> RuleState:
        return replace(self)


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    fingerprint: str
    rule: RuleSpec
    sensor: SensorContext
    subject: str
    level: Level
    previous: Level | None
    value: float
    at_ms: int


class RateTracker:
    """Recent (time, value) samples of one sensor, thinned to a few per horizon."""

    __slots__ = ("horizon", "samples")

    def __init__(self, horizon_ms: int) -> None:
        self.horizon = horizon_ms
        # A list, not a deque: thinned to at most ~9 samples, and an empty deque takes ~750 bytes (its
        # first block of 64 slots): 1.9 MB for the 2,500 pressure sensors of the bench's census.
        self.samples: list[tuple[int, float]] = []

    def rate(self, t: int, v: float, unit_ms: int) -> float:
        """Change per ``unit_ms`` from the oldest sample within the horizon; NaN until half a horizon is seen."""
        s = self.samples
        while len(s) > 1 and t - s[1][0] >= self.horizon:
            del s[0]
        out = math.nan
        if s and t - s[0][0] >= self.horizon / 2:
            t0, v0 = s[0]
            out = (v - v0) / (t - t0) * unit_ms
        if not s or t - s[-1][0] >= self.horizon / 8:
            s.append((t, v))
        return out


class HourlyHistory:
    """Per-sensor mean of each local hour, compact, for same-hour rolling-median baselines."""

    __slots__ = ("acc_count", "acc_hour", "acc_sum", "days", "hours")

    def __init__(self, days: int) -> None:
        self.days = days
        self.hours: dict[int, float] = {}
        self.acc_hour = -1
        self.acc_sum = 0.0
        self.acc_count = 0

    def add(self, hour: int, v: float) -> tuple[int, float] | None:
        """Account a reading of local hour index ``hour``; returns a finished (hour, mean) to keep."""
        done = None
        if hour != self.acc_hour:
            if hour < self.acc_hour:
                return None
            if self.acc_count:
                done = (self.acc_hour, self.acc_sum / self.acc_count)
                self.hours[done[0]] = done[1]
                oldest = hour - 24 * (self.days + 1)
                for h in [h for h in self.hours if h < oldest]:
                    del self.hours[h]
            self.acc_hour, self.acc_sum, self.acc_count = hour, 0.0, 0
        self.acc_sum += v
        self.acc_count += 1
        return done

    def median(self, hour: int, min_days: int) -> float:
        same = [self.hours[h] for k in range(1, self.days + 1) if (h := hour - 24 * k) in self.hours]
        return statistics.median(same) if len(same) >= min_days else math.nan


@dataclass(slots=True)
class _Batch:
    states: dict[str, RuleState | None] = field(default_factory=dict)
    last_ms: dict[str, int | None] = field(default_factory=dict)


class Engine:
    """Rules bound to sensors, their states, and the evaluation of readings and sensor status."""

    def __init__(self, *, catalogue: QuantityCatalogue, policy: Policy) -> None:
        self.catalogue = catalogue
        self.policy = policy
        self.sensors: dict[str, SensorContext] = {}
        self.facilities: dict[str, FacilityContext] = {}
        self.api_rules: dict[str, RuleSpec] = {}
        self.states: dict[str, RuleState] = {}
        self.last_ms: dict[str, int] = {}
        self.hourly: dict[str, HourlyHistory] = {}
        # Finished hours to persist (sensor, local hour index, mean); the service drains it.
        self.finished_hours: list[tuple[str, int, float]] = []
        self._rates: dict[tuple[str, int], RateTracker] = {}
        self._bound: dict[str, tuple[RuleSpec, ...]] = {}
        # Distinct bound rule tuples (RuleSpecs are frozen: equal ones are interchangeable).
        self._shared: dict[tuple[RuleSpec, ...], tuple[RuleSpec, ...]] = {}
        # Sensors whose rules need hourly history: days to keep (absent: none).
        self._history_days: dict[str, int] = {}
        self._defaults: dict[str, list[RuleSpec]] = {}
        self._composites: dict[str, tuple[RuleSpec, ...]] = {}
        self._holds: dict[tuple[str, str], list[tuple[set[str], set[str]]]] = {}
        self._offset_ms = policy.utc_offset_h * _HOUR_MS
        self._batch: _Batch | None = None
        self.dirty: set[str] = set()
        self.skipped = 0

    # --- context ----------------------------------------------------------------------------------

    def set_sensor(self, ctx: SensorContext) -> None:
        old = self.sensors.get(ctx.sensor_id)
        self.sensors[ctx.sensor_id] = ctx
        self._bound.pop(ctx.sensor_id, None)
        if old is not None and old.facility_code != ctx.facility_code:
            self._composites.pop(old.facility_code, None)
        self._composites.pop(ctx.facility_code, None)

    def set_facility(self, ctx: FacilityContext) -> None:
        self.facilities[ctx.code] = ctx
        self.rebind()

    def set_rule(self, rule: RuleSpec) -> None:
        self.api_rules[rule.id] = rule
        self.rebind()

    def remove_rule(self, rule_id: str) -> None:
        self.api_rules.pop(rule_id, None)
        self.rebind()

    def rebind(self) -> None:
        """Forget every binding (rules or contexts changed); they are rebuilt on the next reading."""
        self._bound.clear()
        self._shared.clear()
        self._composites.clear()

    @functools.cached_property
    def _default_no_data(self) -> RuleSpec | None:
        """The policy's no-data rule, one object for every sensor (it was built per sensor: 1.4 MB)."""
        if not self.policy.defaults.no_data_enabled:
            return None
        return RuleSpec(
            id="no_data",
            name="无数据 no data",
            kind="no_data",
            origin="catalogue",
            level=self.policy.defaults.no_data_level,
        )

    def forget(self, subjects: AbstractSet[str]) -> list[str]:
        """Drop the rule states of these subjects (retired sensors, or facilities for composite rules) and
        what was learnt from their readings; a retired sensor's firing state must not hold on for ever.
        Returns the fingerprints dropped."""
        dropped = [fp for fp, st in self.states.items() if st.subject in subjects]
        for fp in dropped:
            del self.states[fp]
        for subject in subjects:
            self.last_ms.pop(subject, None)
            self.hourly.pop(subject, None)
            self._bound.pop(subject, None)
            self._history_days.pop(subject, None)
        for key in [k for k in self._rates if k[0] in subjects]:
            del self._rates[key]
        for key in list(self._holds):
            if key[1] in subjects:
                del self._holds[key]  # a composite rule of a retired facility
            else:
                for raw, held in self._holds[key]:  # a retired sensor no longer holds a condition true
                    raw.difference_update(subjects)
                    held.difference_update(subjects)
        return dropped

    def load_state(self, state: RuleState) -> None:
        """A stored state; a threshold rule's last_ms is the newest evaluated device time of its sensor."""
        self.states[state.fingerprint] = state
        if state.kind == "threshold" and state.last_ms > self.last_ms.get(state.subject, 0):
            self.last_ms[state.subject] = state.last_ms

    # --- rules ------------------------------------------------------------------------------------

    def default_rules(self, quantity: str) -> list[RuleSpec]:
        """The catalogue's rules of a quantity, with the policy's durations and margins (built once)."""
        found = self._defaults.get(quantity)
        if found is None:
            found = self._defaults[quantity] = self._build_defaults(quantity)
        return found

    def _build_defaults(self, quantity: str) -> list[RuleSpec]:
        try:
            q = self.catalogue.get(quantity)
        except (KeyError, UnknownQuantityError):
            return []
        for_s, clear_s = self.policy.durations(str(q.domain))
        d = self.policy.defaults
        return [
            RuleSpec(
                id=f"catalogue:{quantity}:{tr.measure}",
                name=f"{q.name('zh-CN')} {tr.measure}",
                kind="threshold",
                origin="catalogue",
                conditions=(
                    Condition.from_threshold(
                        quantity,
                        str(tr.measure),
                        tr,
                        margin_pct=d.clear_margin_pct,
                        baseline_days=d.baseline_days,
                    ),
                ),
                for_ms=for_s * 1000,
                clear_for_ms=clear_s * 1000,
            )
            for tr in q.thresholds
        ]

    def _with_thresholds(self, rule: RuleSpec, tr: ThresholdRule, origin: Origin) -> RuleSpec:
        cond = rule.conditions[0]
        new = Condition.from_threshold(
            cond.quantity,
            cond.measure,
            tr,
            margin_pct=self.policy.defaults.clear_margin_pct,
            baseline_days=cond.baseline_days,
        )
        return replace(rule, conditions=(new,), origin=origin)

    def rules_for(self, sensor: SensorContext) -> tuple[RuleSpec, ...]:
        """Threshold and no-data rules of one sensor: defaults, overridden by facility kind, assets, the API."""
        bound = self._bound.get(sensor.sensor_id)
        if bound is not None:
            return bound
        facility = self.facilities.get(sensor.facility_code)
        by_measure: dict[str, RuleSpec] = {r.conditions[0].measure: r for r in self.default_rules(sensor.quantity)}
        if facility is not None:
            for o in self.policy.overrides_for(facility.kind, sensor.quantity):
                self._override(by_measure, sensor.quantity, str(o.measure), o, "catalogue")
            for t in facility.thresholds:
                if t.quantity == sensor.quantity:
                    self._override(by_measure, sensor.quantity, t.measure, t.rule, "assets")
        for t in sensor.thresholds:
            self._override(by_measure, sensor.quantity, t.measure, t.rule, "assets")
        no_data = self._default_no_data
        api = sorted(
            (r for r in self.api_rules.values() if r.enabled and r.kind != "composite" and r.matches(sensor, facility)),
            key=lambda r: r.specificity,
        )
        for r in api:
            if r.kind == "no_data":
                no_data = r
            elif r.conditions[0].quantity == sensor.quantity:
                by_measure[r.conditions[0].measure] = r
        rules = tuple(by_measure.values()) + ((no_data,) if no_data is not None else ())
        # Sensors of one quantity mostly bind the same rules: one tuple for all of them, not one each.
        rules = self._shared.setdefault(rules, rules)
        self._bound[sensor.sensor_id] = rules
        days = self._needs_history(rules, sensor)
        if days:
            self._history_days[sensor.sensor_id] = days
        else:
            self._history_days.pop(sensor.sensor_id, None)  # most sensors: kept out of the table
        return rules

    def _override(
        self, by_measure: dict[str, RuleSpec], quantity: str, measure: str, tr: ThresholdRule, origin: Origin
    ) -> None:
        base = by_measure.get(measure)
        if base is None:
            for_s, clear_s = self.policy.durations(self._domain(quantity))
            base = RuleSpec(
                id=f"catalogue:{quantity}:{measure}",
                name=f"{quantity} {measure}",
                kind="threshold",
                origin=origin,
                conditions=(Condition(quantity=quantity, measure=measure, direction="above", steps=()),),
                for_ms=for_s * 1000,
                clear_for_ms=clear_s * 1000,
            )
        by_measure[measure] = self._with_thresholds(base, tr, origin)

    def _domain(self, quantity: str) -> str:
        try:
            return str(self.catalogue.get(quantity).domain)
        except (KeyError, UnknownQuantityError):
            return ""

    def composites_for(self, facility_code: str) -> tuple[RuleSpec, ...]:
        found = self._composites.get(facility_code)
        if found is None:
            facility = self.facilities.get(facility_code)
            probe = SensorContext(
                sensor_id="", quantity="", facility_code=facility_code, region=facility.region if facility else ""
            )
            found = tuple(
                r for r in self.api_rules.values() if r.enabled and r.kind == "composite" and r.matches(probe, facility)
            )
            self._composites[facility_code] = found
        return found

    # --- batches ----------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start a batch: changes from here on can be undone by ``rollback``."""
        self._batch = _Batch()
        self.dirty = set()
        self.finished_hours = []

    def commit(self) -> None:
        """The batch's changes are stored: forget the undo log."""
        self._batch = None
        self.dirty = set()
        self.finished_hours = []

    def rollback(self) -> None:
        """The batch's transaction failed: put states and newest times back as they were."""
        batch, self._batch = self._batch, None
        if batch is not None:
            for fp, old in batch.states.items():
                if old is None:
                    self.states.pop(fp, None)
                else:
                    self.states[fp] = old
            for sid, t in batch.last_ms.items():
                if t is None:
                    self.last_ms.pop(sid, None)
                else:
                    self.last_ms[sid] = t
        self.dirty = set()
        self.finished_hours = []

    def _state(self, fingerprint: str, rule: RuleSpec, subject: str) -> RuleState:
        st = self.states.get(fingerprint)
        if st is None:
            st = RuleState(fingerprint=fingerprint, rule_id=rule.id, subject=subject, kind=rule.kind)
            self.states[fingerprint] = st
            if self._batch is not None and fingerprint not in self._batch.states:
                self._batch.states[fingerprint] = None
        return st

    def touched_state(self, fingerprint: str, rule: RuleSpec, subject: str) -> RuleState:
        """The state of ``fingerprint`` (made if new), marked changed in this batch: ``rollback`` undoes it."""
        st = self._state(fingerprint, rule, subject)
        self._touch(st)
        return st

    def _touch(self, st: RuleState) -> None:
        """About to change a state: remember how it was before the batch and mark it to be written."""
        if self._batch is not None and st.fingerprint not in self._batch.states:
            self._batch.states[st.fingerprint] = st.copy()
        self.dirty.add(st.fingerprint)

    def _advance(self, sensor_id: str, t: int) -> bool:
        """Record ``t`` as the sensor's newest evaluated time; False if it is not newer."""
        last = self.last_ms.get(sensor_id)
        if last is not None and t <= last:
            return False
        if self._batch is not None and sensor_id not in self._batch.last_ms:
            self._batch.last_ms[sensor_id] = last
        self.last_ms[sensor_id] = t
        return True

    # --- evaluation -------------------------------------------------------------------------------

    def measure(self, cond: Condition, sensor: SensorContext, t: int, v: float) -> float:
        """The condition's measure of reading (t, v); NaN when it cannot be computed (yet)."""
        m = cond.measure
        if m == "value":
            return v
        if m == "deviation_pct":
            sp = sensor.setpoint
            return abs(v - sp) / abs(sp) * 100.0 if sp else math.nan
        if m in RATE_UNIT_MS:
            unit = RATE_UNIT_MS[m]
            horizon = min(unit, _MAX_RATE_HORIZON_MS)
            key = (sensor.sensor_id, horizon)
            tracker = self._rates.get(key)
            if tracker is None:
                tracker = self._rates[key] = RateTracker(horizon)
            return tracker.rate(t, v, unit)
        base = sensor.baseline if m != "baseline_deviation_pct" else None
        if base is None:
            base = self._rolling_baseline(sensor.sensor_id, t, cond.baseline_days)
        if not base or math.isnan(base):
            return math.nan
        if m == "drop_pct":
            return (base - v) / abs(base) * 100.0
        if m == "rise_pct":
            return (v - base) / abs(base) * 100.0
        return abs(v - base) / abs(base) * 100.0

    def _hour(self, t: int) -> int:
        return (t + self._offset_ms) // _HOUR_MS

    def _rolling_baseline(self, sensor_id: str, t: int, days: int) -> float:
        h = self.hourly.get(sensor_id)
        if h is None:
            return math.nan
        return h.median(self._hour(t), self.policy.defaults.baseline_min_days)

    def _needs_history(self, rules: Iterable[RuleSpec], sensor: SensorContext) -> int:
        days = 0
        for r in rules:
            for c in r.conditions:
                if c.measure == "baseline_deviation_pct" or (
                    c.measure in ("drop_pct", "rise_pct") and sensor.baseline is None
                ):
                    days = max(days, c.baseline_days)
        return days

    def evaluate(self, sensor_id: str, t: int, v: float, *, usable: bool = True) -> list[Change]:
        """Evaluate one reading (value in the catalogue unit). ``usable`` False: flagged bad, not evaluated."""
        sensor = self.sensors.get(sensor_id)
        if sensor is None or not sensor.active or not usable or math.isnan(v):
            self.skipped += 1
            return []
        if sensor.windows and sensor.in_window(t):
            self.skipped += 1
            return []
        # The census's string from here on: a reading's is a copy of its own, which the tables keyed by
        # sensor (last_ms, ...) would otherwise keep as a second copy of every sensor id.
        sensor_id = sensor.sensor_id
        if not self._advance(sensor_id, t):
            self.skipped += 1
            return []
        rules = self.rules_for(sensor)
        changes: list[Change] = []
        for rule in rules:
            if rule.kind != "threshold":
                continue
            cond = rule.conditions[0]
            m = self.measure(cond, sensor, t, v)
            if math.isnan(m):
                continue
            raw = cond.level(m)
            held = cond.level(m, cond.clear_margin) if cond.clear_margin else raw
            fp = f"{rule.id}/{sensor_id}"
            self._step(fp, rule, sensor, sensor_id, raw, held, t, m, changes)
        composites = self.composites_for(sensor.facility_code)
        if composites:
            self._composite(composites, sensor, t, v, changes)
        days = self._history_days.get(sensor_id, 0)
        if days:
            hist = self.hourly.get(sensor_id)
            if hist is None:
                hist = self.hourly[sensor_id] = HourlyHistory(days)
            done = hist.add(self._hour(t), v)
            if done is not None:
                self.finished_hours.append((sensor_id, *done))
        return changes

    def _composite(
        self, rules: tuple[RuleSpec, ...], sensor: SensorContext, t: int, v: float, changes: list[Change]
    ) -> None:
        for rule in rules:
            if not any(c.quantity == sensor.quantity for c in rule.conditions):
                continue
            key = (rule.id, sensor.facility_code)
            holds = self._holds.get(key)
            if holds is None:
                holds = self._holds[key] = [(set(), set()) for _ in rule.conditions]
            value = math.nan
            for i, cond in enumerate(rule.conditions):
                if cond.quantity != sensor.quantity:
                    continue
                m = self.measure(cond, sensor, t, v)
                if math.isnan(m):
                    continue
                raw_set, held_set = holds[i]
                (raw_set.add if cond.level(m) is not None else raw_set.discard)(sensor.sensor_id)
                (held_set.add if cond.level(m, cond.clear_margin) is not None else held_set.discard)(sensor.sensor_id)
                value = m
            raw = rule.level if all(r for r, _ in holds) else None
            held = rule.level if all(h for _, h in holds) else None
            self._step(
                f"{rule.id}/{sensor.facility_code}", rule, sensor, sensor.facility_code, raw, held, t, value, changes
            )

    def sensor_status(self, sensor_id: str, offline: bool, t: int) -> list[Change]:
        """A sensor went offline (no-data rules fire) or came back (they clear)."""
        sensor = self.sensors.get(sensor_id)
        if sensor is None or not sensor.active:
            return []
        changes: list[Change] = []
        for rule in self.rules_for(sensor):
            if rule.kind == "no_data" and rule.level is not None:
                level = rule.level if offline else None
                fp = f"{rule.id}/{sensor_id}"
                st = self.states.get(fp)
                if st is not None and t < st.last_ms:
                    continue  # an older status event than the one already applied
                self._step(fp, rule, sensor, sensor_id, level, level, t, math.nan, changes)
        return changes

    def _step(
        self,
        fp: str,
        rule: RuleSpec,
        sensor: SensorContext,
        subject: str,
        raw: Level | None,
        held: Level | None,
        t: int,
        m: float,
        changes: list[Change],
    ) -> None:
        """Move one rule state with the levels reached now (``raw``) and held with the margin (``held``)."""
        st = self.states.get(fp)
        if st is None:
            if raw is None:
                return  # the common case: nothing pending, nothing firing, nothing to remember
            st = self._state(fp, rule, subject)
        f = st.firing

        def change(kind: ChangeKind, level: Level, previous: Level | None) -> None:
            changes.append(Change(kind, fp, rule, sensor, subject, level, previous, m, t))

        if f is None:
            if raw is None:
                if st.pending_since is not None:
                    self._touch(st)
                    st.pending_since = None
                    st.last_ms = t
                return
            if st.pending_since is None:
                self._touch(st)
                st.pending_since = t
                st.last_ms = t
            if t - st.pending_since >= rule.for_ms:
                self._touch(st)
                st.firing, st.pending_since, st.clear_since, st.last_ms = raw, None, None, t
                change("raised", raw, None)
            return
        if more_severe(raw, f):
            assert raw is not None
            self._touch(st)
            st.firing, st.clear_since, st.last_ms = raw, None, t
            change("level_changed", raw, f)
            return
        if held is not None and SEVERITY[held] >= SEVERITY[f]:
            if st.clear_since is not None:
                self._touch(st)
                st.clear_since = None
                st.last_ms = t
            if raw is not None:
                change("breach", raw, f)
            return
        if st.clear_since is None:
            self._touch(st)
            st.clear_since = t
            st.last_ms = t
        if t - st.clear_since >= rule.clear_for_ms:
            self._touch(st)
            st.clear_since, st.last_ms = None, t
            if held is None:
                st.firing = None
                change("cleared", f, f)
            else:
                st.firing = held
                change("level_changed", held, f)
        elif raw is not None:
            change("breach", raw, f)
