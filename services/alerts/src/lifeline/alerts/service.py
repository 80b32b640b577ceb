"""Alerts logic: readings evaluated into alerts, the handling workflow, rules and silences.

Evaluation runs in memory (``Engine``); per batch of readings, the states that changed, the alerts they
raise or move and the events to publish are written in one transaction, and the batch is acknowledged
only after it commits. A failed transaction rolls the engine back, so the redelivery starts over from the
same states. Workflow steps and timers write the alert, its history entry and its event together too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError

from lifeline.kit import i18n
from lifeline.kit.api import (
    bad_page_token,
    decode_page_token,
    encode_page_token,
    invalid_field,
    require_any_role,
    require_visible,
    scope_prefix,
)
from lifeline.kit.audit import audit
from lifeline.kit.auth import Principal
from lifeline.kit.catalogue import Level, QuantityCatalogue, ThresholdRule, UnknownQuantityError
from lifeline.kit.db import Database
from lifeline.kit.outbox import enqueue
from lifeline.kit.problems import ProblemError
from lifeline.kit.readings import iter_readings
from lifeline.v1 import common_pb2, telemetry_pb2

from . import repository
from .context import entity_doc, facility_context, is_retired, sensor_context
from .engine import SEVERITY, Change, ChangeKind, Condition, Engine, HourlyHistory, RuleSpec, RuleState, SensorContext
from .messages import alert_event
from .network import Network, Risk, RiskRegister, points, raised_by_one
from .policy import Policy
from .workflow import TERMINAL, State, allowed, due

READER_ROLES = ("viewer", "partner", "operator", "admin", "service")
WRITER_ROLES = ("operator", "admin", "service")
MAX_PAGE = 1000
SYSTEM = "system"
_UNUSABLE = frozenset({common_pb2.QUALITY_BAD, common_pb2.QUALITY_MAINTENANCE})

i18n.register(
    {
        "alerts.not_found": {"zh-CN": "{entity} {id} 不存在", "en": "{entity} {id} does not exist"},
        "alerts.forbidden": {
            "zh-CN": "无权访问区域 {region} 的告警",
            "en": "not allowed to access alerts of region {region}",
        },
        "alerts.illegal_transition": {
            "zh-CN": "告警处于“{state}”状态，不能转为“{to}”（可转为：{allowed}）",
            "en": "the alert is {state} and cannot move to {to} (allowed: {allowed})",
        },
        "alerts.conflict": {
            "zh-CN": "告警 {id} 刚被他人修改，请重新读取后再试",
            "en": "alert {id} was changed concurrently; read it again and retry",
        },
        "alerts.rule_conflict": {
            "zh-CN": "规则 {id} 刚被他人修改，请重新读取后再试",
            "en": "rule {id} was changed concurrently; read it again and retry",
        },
        "alerts.no_unit": {
            "zh-CN": "设施 {facility} 没有责任单位，请指定 unit_id",
            "en": "facility {facility} has no responsible unit; give unit_id",
        },
        "alerts.duplicate_rule": {"zh-CN": "规则 {id} 已存在", "en": "rule {id} already exists"},
        "alerts.bad_rule": {"zh-CN": "规则无效：{why}", "en": "invalid rule: {why}"},
        "alerts.unknown_quantity": {"zh-CN": "未知的监测量 {quantity}", "en": "unknown quantity {quantity}"},
        "alerts.rule_readonly": {
            "zh-CN": "规则 {id} 来自监测量目录或资产阈值，请在那里修改",
            "en": "rule {id} comes from the quantity catalogue or asset thresholds; change it there",
        },
        "alerts.bad_silence": {
            "zh-CN": "静默须至少指定一个匹配条件，且结束时间晚于开始时间",
            "en": "a silence needs at least one matcher and must end after it starts",
        },
        "alerts.entity.alert": {"zh-CN": "告警", "en": "alert"},
        "alerts.entity.rule": {"zh-CN": "规则", "en": "rule"},
        "alerts.entity.silence": {"zh-CN": "静默", "en": "silence"},
    }
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# The notifications module raises the same problems as the alerts it serves.
_invalid = invalid_field


def _not_found(entity: str, key: str) -> ProblemError:
    return ProblemError(404, detail="alerts.not_found", params={"entity": entity, "id": key})


class _Discard(Exception):
    """Rolls the warm-up's transaction back."""


@dataclass(slots=True)
class _Breaches:
    count: int
    last: float
    peak: float
    higher_is_worse: bool
    at_ms: int


def _higher_is_worse(change: Change) -> bool:
    return not change.rule.conditions or change.rule.conditions[0].direction != "below"


_INTERNAL = frozenset({"is_open", "seq", "state_ms"})
# Transaction info key: {alert id: its row as inserted} for alerts raised in the transaction and not changed
# since, so the inhibition pass need not read them back (a round trip per raise on PostgreSQL).
_RAISED_ROWS = "lifeline.alerts.raised_rows"


def alert_public(alert: Mapping[str, Any]) -> dict[str, Any]:
    """An alert row or dict without its bookkeeping columns."""
    return {k: v for k, v in alert.items() if k not in _INTERNAL}


def history_public(row: Any) -> dict[str, Any]:
    d = dict(row._mapping)
    d.pop("alert_id", None)
    return d


class AlertsService:
    """Evaluation of readings and status, the workflow, and region-scoped reads and writes."""

    def __init__(
        self,
        *,
        region: str,
        catalogue: QuantityCatalogue,
        policy: Policy,
        db: Database,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.region = region
        self.catalogue = catalogue
        self.policy = policy
        self.db = db
        self.clock = clock
        self.engine = Engine(catalogue=catalogue, policy=policy)
        self.units: dict[str, dict[str, Any]] = {}
        self.network = Network()
        self._facility_points: dict[str, tuple[tuple[float, float], ...]] = {}
        self.risks = RiskRegister()
        # Versions of the census entities held, by entity then key, so a census entry read again costs no
        # database round trip. (Keyed by (entity, key) tuples it took 0.7 MB more for 12,500 entities.)
        self.census_versions: dict[str, dict[str, int]] = {entity: {} for entity in repository.CTX}
        self._silences: list[dict[str, Any]] = []
        # Silences whose start / end the timer has already applied to open alerts (see check_silences).
        self._silences_started: set[str] = set()
        self._silences_ended: set[str] = set()
        # The readings, status and census consumers run side by side and interleave at every await, but the
        # engine has one undo log (begin/commit/rollback) and one set of dirty states to write: a batch
        # holds this from begin to commit, so another batch's begin cannot reset what it has yet to write.
        self._engine_batch = asyncio.Lock()

    # --- start-up --------------------------------------------------------------------------------

    async def load(self) -> None:
        """Fill the engine from the database: census copy, rules, rule states, baselines, silences."""
        async with self.db.transaction(readonly=True) as session:
            for entity in ("facility", "sensor", "unit", "link", "risk"):
                for doc in await repository.all_ctx(session=session, entity=entity):
                    key = str(doc.get(repository.CTX[entity][1], ""))
                    self.census_versions[entity][key] = int(doc.get("version", 0))
                    self._hold(entity, doc, rebind=False)
            for row in await repository.live_rules(session=session):
                self.engine.api_rules[row.id] = rule_spec(dict(row.doc), self.policy)
            for row in await repository.all_states(session=session):
                self.engine.load_state(
                    RuleState(
                        fingerprint=row.fingerprint,
                        rule_id=row.rule_id,
                        subject=row.subject,
                        firing=Level(row.firing) if row.firing else None,
                        pending_since=row.pending_since,
                        clear_since=row.clear_since,
                        last_ms=row.last_ms,
                        alert_id=row.alert_id,
                        kind=row.kind,
                    )
                )
            days = self.policy.defaults.baseline_days
            since = (self.clock() + self.policy.utc_offset_h * 3_600_000) // 3_600_000 - 24 * (days + 1)
            for row in await repository.baseline_hours(session=session, since_hour=since):
                hist = self.engine.hourly.get(row.sensor_id)
                if hist is None:
                    hist = self.engine.hourly[row.sensor_id] = HourlyHistory(days)
                hist.hours[row.hour] = row.mean
            self._silences = [dict(r._mapping) for r in await repository.silences(session=session)]
            # Ended silences that hold no alert need no pass of the timer (it checks the others once).
            holding = await repository.suppression_sources(session=session, source="silence")
            now = self.clock()
            self._silences_ended = {s["id"] for s in self._silences if s["ends_ms"] <= now and s["id"] not in holding}
        self.engine.rebind()

    # --- census --------------------------------------------------------------------------------------

    async def apply_assets(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Keep census entries ((entity, change event) pairs); older or repeated versions change nothing."""
        docs = []
        for entity, payload in items:
            parsed = entity_doc(entity, payload)
            if parsed is not None:
                docs.append((entity, *parsed))
        return await self._keep(docs)

    async def _keep(self, docs: list[tuple[str, str, int, dict[str, Any]]]) -> int:
        """Store the newer versions, then apply them in memory; returns how many were newer.

        A whole batch is one transaction of a few multi-row upserts: per-row statements
        made a first start's census (12,500 events) take longer than the readings consumer waits for it."""
        async with self._engine_batch:
            return await self._keep_batch(docs)

    async def _keep_batch(self, docs: list[tuple[str, str, int, dict[str, Any]]]) -> int:
        newest: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        for entity, key, version, doc in docs:
            k = (entity, key)
            # Only the newest version of an entity in the batch counts; older ones cost nothing.
            if key and version > self.census_versions[entity].get(key, -1) and version > newest.get(k, (-1, None))[0]:
                newest[k] = (version, doc)
        if not newest:
            return 0
        by_entity: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
        for (entity, key), (version, doc) in newest.items():
            by_entity.setdefault(entity, []).append((key, version, doc))
        kept: list[tuple[str, str, int, dict[str, Any]]] = []
        async with self.db.transaction() as session:
            for entity, rows in by_entity.items():
                stored = await repository.upsert_ctx(session=session, entity=entity, rows=rows)
                kept += [(entity, key, version, doc) for key, version, doc in rows if key in stored]
            retired = {
                (entity, key) for entity, key, _, doc in kept if entity in ("sensor", "facility") and is_retired(doc)
            }
            gone = await self._clear_retired(session, retired) if retired else set()
        if gone:
            self.engine.forget(gone)
        facilities = False
        for entity, key, version, doc in kept:
            held = self.census_versions[entity]
            if version < held.get(key, -1):
                continue  # a newer version came in meanwhile (another replica's consumer, or a re-read census)
            held[key] = version
            self._hold(entity, doc, rebind=False)
            facilities |= entity == "facility"
        if facilities:
            self.engine.rebind()  # once per batch: the sensors on a changed facility bind their rules anew
        entities = {entity for entity, *_ in kept}
        if "link" in entities and self.policy.inhibit:
            # The network changed: which alert is downstream of which may have changed with it.
            async with self.db.transaction() as session:
                await self._inhibition_pass(session, set(), every_target=True)
        if "risk" in entities or "facility" in entities:
            async with self.db.transaction() as session:
                await self._reassess_risk(session)
        return len(kept)

    async def _clear_retired(self, session: Any, retired: set[tuple[str, str]]) -> set[str]:
        """Clear the active alerts of sensors and facilities assets retired: no reading will ever clear them.

        The condition is cleared (history and event, "sensor retired" / "facility retired"); the handling
        workflow goes on as for any cleared alert. Their rule states are deleted too; returns their
        subjects (the retired sensors, those on retired facilities, and those facilities) for the engine."""
        facilities = {key for entity, key in retired if entity == "facility"}
        sensors = {key for entity, key in retired if entity == "sensor"}
        # Assets retires a facility only after its sensors; should their events come later, or not at all.
        on_facilities = {s.sensor_id for s in self.engine.sensors.values() if s.facility_code in facilities}
        now = self.clock()
        cleared: set[str] = set()
        for row in await repository.open_alerts_of(session=session, sensor_ids=sensors, facility_codes=facilities):
            if row.condition != "active":
                continue
            why = "sensor retired" if row.sensor_id in sensors else "facility retired"
            values = {"condition": "cleared", "cleared_ms": now}
            await self._record(session, row, kind="cleared", values=values, entry={"comment": why})
            cleared.add(row.id)
        subjects = sensors | on_facilities | facilities
        await repository.delete_states(session=session, subjects=subjects)
        if cleared and self.policy.inhibit:
            await self._inhibition_pass(session, cleared)  # what they held suppressed is released
        return subjects

    async def _reassess_risk(self, session: Any) -> int:
        """Bring open, active alerts to their rule's level plus the raise of the risk sources near now
        (a risk source registered, moved or retired while the alert is open). Returns how many moved."""
        moved = 0
        for row in await repository.open_alerts(session=session):
            st = self.engine.states.get(row.fingerprint)
            if row.condition != "active" or st is None or st.firing is None or st.alert_id != row.id:
                continue
            level, risk = self._risk_raised(st.firing, row.facility_code)
            if str(level) == row.level:
                continue
            note = _risk_note(risk) if risk is not None else f"risk_source: none near any more (rule level {st.firing})"
            value = row.last_value if row.last_value is not None else math.nan
            await self._change_level(session, row, level, value=value, at_ms=0, comment=note)
            moved += 1
        return moved

    def _hold(self, entity: str, doc: dict[str, Any], *, rebind: bool = True) -> None:
        if entity == "sensor":
            self.engine.set_sensor(sensor_context(doc))
        elif entity == "facility":
            if rebind:
                self.engine.set_facility(facility_context(doc))
            else:
                self.engine.facilities[doc["code"]] = facility_context(doc)
            self._facility_points[doc["code"]] = points(doc.get("geometry"))
        elif entity == "unit":
            self.units[doc["id"]] = doc
        elif entity == "link":
            self.network.set_link(doc)
        elif entity == "risk":
            self.risks.set_risk(doc)

    # --- evaluation -------------------------------------------------------------------------------

    async def evaluate(self, batches: Iterable[telemetry_pb2.ReadingsAccepted]) -> int:
        """Evaluate accepted readings; returns how many alert changes were written."""
        async with self._engine_batch:
            return await self._evaluate(batches)

    async def _evaluate(self, batches: Iterable[telemetry_pb2.ReadingsAccepted]) -> int:
        engine = self.engine
        engine.begin()
        changes: list[Change] = []
        written = 0
        try:
            for batch in batches:
                for sensor_id, ts, value, _unit, quality in iter_readings(batch):
                    found = engine.evaluate(sensor_id, ts, value, usable=quality not in _UNUSABLE)
                    if found:
                        changes += found
                if changes:
                    # An alert to raise or move: write it now, not after the rest of the fetch (under load
                    # each message of 500 readings takes milliseconds). If a later write fails, the engine
                    # rolls back to here and the redelivered messages' readings already written are no
                    # longer newer than the sensors' last ones, so they are skipped, not raised again.
                    await self._write(changes)
                    engine.commit()
                    engine.begin()
                    written += len(changes)
                    changes = []
                # Let the loop run between messages (a fetch is up to 64 × 500 readings, 100+ ms under
                # load, and a SQLite write does not yield): the outbox relay publishes an alert just
                # committed now, not after the rest of the fetch, and NATS I/O and requests go on.
                await asyncio.sleep(0)
            await self._write(changes)
        except BaseException:
            engine.rollback()
            raise
        engine.commit()
        return written

    async def apply_status(self, events: Iterable[telemetry_pb2.SensorStatusChanged]) -> int:
        """No-data rules from ingest's online/offline events."""
        async with self._engine_batch:
            return await self._apply_status(events)

    async def _apply_status(self, events: Iterable[telemetry_pb2.SensorStatusChanged]) -> int:
        engine = self.engine
        engine.begin()
        changes: list[Change] = []
        try:
            for ev in events:
                if ev.state in (telemetry_pb2.SENSOR_STATE_OFFLINE, telemetry_pb2.SENSOR_STATE_ONLINE):
                    changes += engine.sensor_status(
                        ev.sensor_id, ev.state == telemetry_pb2.SENSOR_STATE_OFFLINE, ev.changed_ms
                    )
            await self._write(changes)
        except BaseException:
            engine.rollback()
            raise
        engine.commit()
        return len(changes)

    async def warm_up(self) -> None:
        """Run evaluation's writes once — raise, breach, escalate, clear — in a transaction that is rolled back.

        SQLAlchemy compiles each statement the first time the process runs it (~1–2 ms each on a slow core):
        without this the first alert after a start came ~10 ms later than the rest. Nothing is kept: the
        transaction rolls back (its outbox events with it, so nothing is published) and the engine's undo
        log takes the made-up rule state back out."""
        fp = subject = "~warm-up"
        cond = Condition(quantity="~warm-up", measure="value", direction="above", steps=((Level.IV, 1.0, 1.0),))
        rule = RuleSpec(id=fp, name=fp, kind="threshold", origin="catalogue", conditions=(cond,))
        sensor = SensorContext(sensor_id=fp, quantity=cond.quantity, facility_code=fp, region=self.region)
        at = self.clock()

        def change(kind: ChangeKind, level: Level, previous: Level | None, value: float) -> Change:
            return Change(kind, fp, rule, sensor, subject, level, previous, value, at)

        async with self._engine_batch:
            engine = self.engine
            engine.begin()
            try:
                engine.touched_state(fp, rule, subject)
                with contextlib.suppress(_Discard):
                    async with self.db.core_transaction() as session:
                        await self._write_in(session, [change("raised", Level.IV, None, 2.0)])
                        await self._write_in(session, [change("breach", Level.IV, Level.IV, 3.0)])
                        await self._write_in(session, [change("level_changed", Level.I, Level.IV, 9.0)])
                        await self._write_in(session, [change("cleared", Level.I, Level.I, 0.0)])
                        await session.flush()  # the outbox's insert
                        raise _Discard
            finally:
                engine.rollback()

    async def _write(self, changes: list[Change]) -> None:
        engine = self.engine
        if not (changes or engine.dirty or engine.finished_hours):
            return
        # The hot path (every batch that changes a rule state): Core statements, no ORM session.
        async with self.db.core_transaction() as session:
            await self._write_in(session, changes)

    async def _write_in(self, session: Any, changes: list[Change]) -> None:
        engine = self.engine
        breaches: dict[str, _Breaches] = {}
        moved: set[str] = set()
        raised: set[str] = set()
        for ch in changes:
            st = engine.states[ch.fingerprint]
            if ch.kind == "breach":
                if st.alert_id is not None and not math.isnan(ch.value):
                    b = breaches.get(st.alert_id)
                    worse = _higher_is_worse(ch)
                    if b is None:
                        breaches[st.alert_id] = _Breaches(1, ch.value, ch.value, worse, ch.at_ms)
                    else:
                        b.count += 1
                        b.last = ch.value
                        b.peak = max(b.peak, ch.value) if worse else min(b.peak, ch.value)
                        b.at_ms = ch.at_ms
                continue
            before = st.alert_id
            await self._apply_change(session, ch, st)
            if st.alert_id is not None:
                moved.add(st.alert_id)
                if st.alert_id != before:
                    raised.add(st.alert_id)
        if moved and self.policy.inhibit:
            await self._inhibition_pass(session, moved, new=raised)
        for alert_id, b in breaches.items():
            await repository.add_breaches(
                session=session,
                alert_id=alert_id,
                count=b.count,
                last=b.last,
                peak=b.peak,
                higher_is_worse=b.higher_is_worse,
                at_ms=b.at_ms,
            )
        rows = [
            {
                "fingerprint": st.fingerprint,
                "rule_id": st.rule_id,
                "subject": st.subject,
                "kind": st.kind,
                "firing": str(st.firing) if st.firing else None,
                "pending_since": st.pending_since,
                "clear_since": st.clear_since,
                "last_ms": st.last_ms,
                "alert_id": st.alert_id,
            }
            for st in (engine.states[fp] for fp in engine.dirty)
        ]
        await repository.save_states(session=session, rows=rows)
        await repository.save_hours(session=session, rows=engine.finished_hours)

    async def _apply_change(self, session: Any, ch: Change, st: RuleState) -> None:
        row = await repository.get_alert(session=session, alert_id=st.alert_id) if st.alert_id else None
        open_row = row if row is not None and row.is_open else None
        now = self.clock()
        if ch.kind == "cleared":
            if open_row is not None and open_row.condition == "active":
                await self._record(
                    session,
                    open_row,
                    kind="cleared",
                    values={"condition": "cleared", "cleared_ms": now, "last_value": _num(ch.value)},
                    entry={"value": _num(ch.value)},
                    reading_time_ms=ch.at_ms,
                )
            return
        if open_row is None:
            st.alert_id = await self._raise(session, ch, now)
            return
        # A risk source near the facility raises the rule's level by one.
        level, risk = self._risk_raised(ch.level, open_row.facility_code)
        why = _risk_note(risk) if level != ch.level else None
        if ch.kind == "raised":
            # The condition came back while people still handle the alert: the same alert is active again.
            values = {"condition": "active", "cleared_ms": None, "level": str(level), "last_value": _num(ch.value)}
            if SEVERITY[level] > SEVERITY[Level(open_row.peak_level)]:
                values["peak_level"] = str(level)
            await self._record(
                session,
                open_row,
                kind="raised",
                values=values,
                entry={"from_level": open_row.level, "to_level": str(level), "value": _num(ch.value), "comment": why},
                reading_time_ms=ch.at_ms,
            )
            return
        if str(level) == open_row.level:
            return  # e.g. the rule went from II to I while a risk source already held the alert at I
        await self._change_level(session, open_row, level, value=ch.value, at_ms=ch.at_ms, comment=why)

    async def _change_level(
        self, session: Any, row: Any, level: Level, *, value: float, at_ms: int, comment: str | None
    ) -> dict[str, Any]:
        values = {"level": str(level), "last_value": _num(value), "condition": "active"}
        if SEVERITY[level] > SEVERITY[Level(row.peak_level)]:
            values["peak_level"] = str(level)
        state = State(row.state)
        if state is not State.SUPERVISED and not row.overdue:
            # Time limits follow the level: an escalated alert is due sooner.
            step, due_ms = due(self.policy, state=state, level=level, raised_ms=row.raised_ms, entered_ms=row.state_ms)
            values.update(due_ms=due_ms, due_step=str(step) if step else None)
        return await self._record(
            session,
            row,
            kind="level_changed",
            values=values,
            entry={"from_level": row.level, "to_level": str(level), "value": _num(value), "comment": comment},
            reading_time_ms=at_ms,
        )

    def _risk_raised(self, level: Level, facility_code: str) -> tuple[Level, Risk | None]:
        """The level after the policy's risk-source raise, and the risk source behind it."""
        conf = self.policy.risk
        if not conf.enabled:
            return level, None
        risk = self.risks.near(
            facility_code,
            self._facility_points.get(facility_code, ()),
            min_grade=conf.min_grade,
            max_m=conf.max_distance_m,
        )
        return (raised_by_one(level), risk) if risk is not None else (level, None)

    async def _raise(self, session: Any, ch: Change, now: int) -> str:
        sensor = ch.sensor
        facility = self.engine.facilities.get(sensor.facility_code)
        alert_id = str(uuid.uuid4())
        # Raised at once at the level a risk source near the facility gives it (the rule's plus one): a
        # `raised` event at the rule's level and a `level_changed` after it would let a subscriber that
        # takes only `raised` events of level III or higher miss an alert that is III from the start.
        level, risk = self._risk_raised(ch.level, sensor.facility_code)
        step, due_ms = due(self.policy, state=State.RAISED, level=level, raised_ms=now, entered_ms=now)
        cond = ch.rule.conditions[0] if ch.rule.conditions else None
        values = {
            "id": alert_id,
            "fingerprint": ch.fingerprint,
            "is_open": True,
            "rule_id": ch.rule.id,
            "sensor_id": "" if ch.rule.kind == "composite" else sensor.sensor_id,
            "facility_code": sensor.facility_code,
            "facility_kind": facility.kind if facility else "",
            "quantity": sensor.quantity if ch.rule.kind != "composite" else "",
            "region": sensor.region,
            "level": str(level),
            "peak_level": str(level),
            "state": str(State.RAISED),
            "resume_state": None,
            "condition": "active",
            # A new incident, unless the facility has an open alert (insert_alert groups it with that one).
            "incident_id": str(uuid.uuid4()),
            "unit_id": None,
            "measure": cond.measure if cond else ch.rule.kind,
            "first_value": _num(ch.value),
            "last_value": _num(ch.value),
            "peak_value": _num(ch.value),
            "breach_count": 1,
            "raised_ms": now,
            "updated_ms": now,
            "state_ms": now,
            "cleared_ms": None,
            "closed_ms": None,
            "due_ms": due_ms,
            "due_step": str(step) if step else None,
            "overdue": False,
            "suppressed": False,
            "suppressed_by": None,
            "version": 1,
            "seq": 1,
            "first_device_time_ms": ch.at_ms,
        }
        # Silences and inhibition mark it from the start, so its `raised` event already says suppressed.
        marks = await self._wanted_marks(session, values, now)
        values.update(_mark_summary(marks))
        values["incident_id"] = await repository.insert_alert(session=session, values=values)
        await repository.add_suppressions(
            session=session,
            rows=[
                {"alert_id": alert_id, "source": src, "source_id": sid, "reason": reason, "since_ms": now}
                for (src, sid), reason in marks.items()
            ],
        )
        entry = {
            "alert_id": alert_id,
            "seq": 1,
            "kind": "raised",
            "at_ms": now,
            "actor": SYSTEM,
            "from_state": None,
            "to_state": str(State.RAISED),
            "from_level": None,
            "to_level": str(level),
            "comment": f"{_risk_note(risk)} (rule level {ch.level})" if level != ch.level else None,
            "attachments": [],
            "value": _num(ch.value),
            "step": None,
            "unit_id": None,
        }
        await repository.insert_history(session=session, values=entry)
        self._publish(session, "raised", values, entry, ch.at_ms)
        inserted = dict(values)
        session.info.setdefault(_RAISED_ROWS, {})[alert_id] = SimpleNamespace(**inserted, _mapping=inserted)
        return alert_id

    # --- suppression: silences and inhibition along the network ----------------------------------

    async def _wanted_marks(self, session: Any, alert: Mapping[str, Any], now: int) -> dict[tuple[str, str], str]:
        """Every silence and inhibiting alert that should hold this alert suppressed now → the reason."""
        marks: dict[tuple[str, str], str] = {}
        for s in self._silences:
            if s["starts_ms"] <= now < s["ends_ms"] and _silence_matches(s, alert):
                marks[("silence", str(s["id"]))] = str(s["comment"])
        for rule in self.policy.inhibit:
            if not rule.target.matches(alert):
                continue
            upstream = self.network.upstream(alert["facility_code"], rule.max_depth)
            if not upstream:
                continue
            for src in await repository.open_alerts(session=session, facility_codes=upstream):
                a = src._mapping
                if a["id"] != alert["id"] and a["condition"] == "active" and rule.source.matches(a):
                    marks[("inhibition", a["id"])] = (
                        f"{rule.name}: {a['facility_code']} {upstream[a['facility_code']]} link(s) upstream"
                    )
        return marks

    async def _resuppress(self, session: Any, alert_ids: Iterable[str]) -> int:
        """Bring the marks of these open alerts in line with the silences and inhibition that hold now;
        a change of the alert's suppressed / suppressed_by is recorded (history, event). Returns how many."""
        ids = set(alert_ids)
        if not ids:
            return 0
        now = self.clock()
        held: dict[str, dict[tuple[str, str], Any]] = {}
        for r in await repository.suppressions(session=session, alert_ids=ids):
            held.setdefault(r.alert_id, {})[(r.source, r.source_id)] = r
        changed = 0
        for row in await repository.alerts_by_ids(session=session, ids=ids):
            if not row.is_open:
                continue
            want = await self._wanted_marks(session, row._mapping, now)
            have = held.get(row.id, {})
            new = [(key, reason) for key, reason in want.items() if key not in have]
            await repository.add_suppressions(
                session=session,
                rows=[
                    {"alert_id": row.id, "source": src, "source_id": sid, "reason": reason, "since_ms": now}
                    for (src, sid), reason in new
                ],
            )
            for src, sid in have.keys() - want.keys():
                await repository.remove_suppression(session=session, alert_id=row.id, source=src, source_id=sid)
            kept = sorted(
                [(have[k].since_ms, k[1], have[k].reason) for k in have.keys() & want.keys()]
                + [(now, k[1], reason) for k, reason in new]
            )
            summary = {"suppressed": bool(kept), "suppressed_by": kept[0][1] if kept else None}
            if (summary["suppressed"], summary["suppressed_by"]) == (row.suppressed, row.suppressed_by):
                continue
            kind = "suppressed" if kept else "unsuppressed"
            note = f"{kept[0][1]}: {kept[0][2]}" if kept else f"{row.suppressed_by}: ended"
            await self._record(session, row, kind=kind, values=summary, entry={"comment": note})
            changed += 1
        return changed

    async def _inhibition_pass(
        self, session: Any, alert_ids: set[str], *, every_target: bool = False, new: AbstractSet[str] = frozenset()
    ) -> int:
        """Re-mark the alerts these (new, moved, cleared or closed) alerts may inhibit or be inhibited by.

        ``new``: those of them raised in this transaction. Whatever one of them holds suppressed was raised
        in this transaction too, so is among ``alert_ids`` and checked below: no lookup needed for them."""
        check: set[str] = set()
        rules = self.policy.inhibit
        if alert_ids - new:
            # Skipped for a batch that only raised: one statement fewer in the raise's transaction.
            check |= set(await repository.suppressed_by(session=session, source_ids=alert_ids - new))
        if alert_ids:
            inserted = session.info.get(_RAISED_ROWS, {})
            rows = [inserted[i] for i in alert_ids if i in inserted]
            if len(rows) < len(alert_ids):
                rows += await repository.alerts_by_ids(session=session, ids=alert_ids - inserted.keys())
            for row in rows:
                a = row._mapping
                for rule in rules:
                    if rule.target.matches(a):
                        check.add(row.id)
                    # Whatever its level now: a source stepping down below min_level releases its targets.
                    if rule.source.matches(a, check_level=False):
                        below = self.network.downstream(a["facility_code"], rule.max_depth)
                        if below:
                            targets = await repository.open_alerts(session=session, facility_codes=below)
                            check |= {t.id for t in targets if rule.target.matches(t._mapping)}
        if every_target:
            quantities = (
                None if any(not r.target.quantity for r in rules) else {q for r in rules for q in r.target.quantity}
            )
            for row in await repository.open_alerts(session=session, quantities=quantities):
                if row.suppressed or any(r.target.matches(row._mapping) for r in rules):
                    check.add(row.id)
        return await self._resuppress(session, check)

    async def _record(
        self,
        session: Any,
        row: Any,
        *,
        kind: str,
        values: dict[str, Any],
        entry: dict[str, Any],
        actor: str = SYSTEM,
        reading_time_ms: int = 0,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        """Change an alert, add its history entry and its event; 409 if someone changed it meanwhile."""
        now = self.clock()
        seq = row.seq + 1
        values = {**values, "version": row.version + 1, "seq": seq, "updated_ms": now}
        if not await repository.update_alert(
            session=session, alert_id=row.id, values=values, expected_version=expected_version or row.version
        ):
            raise ProblemError(409, detail="alerts.conflict", params={"id": row.id})
        session.info.get(_RAISED_ROWS, {}).pop(row.id, None)  # its row as inserted is no longer its row
        full = {**dict(row._mapping), **values}
        history = {
            "alert_id": row.id,
            "seq": seq,
            "kind": kind,
            "at_ms": now,
            "actor": actor,
            "from_state": None,
            "to_state": None,
            "from_level": None,
            "to_level": None,
            "comment": None,
            "attachments": [],
            "value": None,
            "step": None,
            "unit_id": None,
            **entry,
        }
        await repository.insert_history(session=session, values=history)
        self._publish(session, kind, full, history, reading_time_ms)
        return full

    def _publish(
        self, session: Any, kind: str, alert: dict[str, Any], entry: dict[str, Any], reading_time_ms: int
    ) -> None:
        enqueue(
            session,
            subject=f"events.alerts.{kind}.{alert['region']}",
            payload=alert_event(kind, alert, entry, reading_time_ms),
            event_id=f"alert:{alert['id']}:{entry['seq']}",
        )

    # --- workflow -----------------------------------------------------------------------------------

    def _visible(self, region: str, principal: Principal, *, action: str, resource: str, source: str | None) -> None:
        require_visible(principal, region, detail="alerts.forbidden", action=action, resource=resource, source=source)

    async def transition(
        self,
        *,
        alert_id: str,
        to_state: State,
        principal: Principal,
        comment: str = "",
        attachments: list[dict[str, Any]] | None = None,
        unit_id: str | None = None,
        expected_version: int | None = None,
        source: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Move an alert one workflow step; the caller's role and region are checked first."""
        async with self.db.transaction() as session:
            row = await repository.get_alert(session=session, alert_id=alert_id)
            if row is None:
                raise _not_found("alert", alert_id)
            self._visible(
                row.region, principal, action="alert.transition", resource=f"alerts/{alert_id}", source=source
            )
            require_any_role(principal, tuple(self.policy.roles.get(str(to_state), WRITER_ROLES)))
            state = State(row.state)
            resume = State(row.resume_state) if row.resume_state else None
            legal = allowed(state, resume)
            if to_state not in legal:
                raise ProblemError(
                    409,
                    detail="alerts.illegal_transition",
                    params={"state": str(state), "to": str(to_state), "allowed": ", ".join(sorted(legal)) or "—"},
                )
            now = self.clock()
            values: dict[str, Any] = {"state": str(to_state), "resume_state": None, "state_ms": now}
            entry: dict[str, Any] = {
                "from_state": str(state),
                "to_state": str(to_state),
                "comment": comment or None,
                "attachments": attachments or [],
            }
            if to_state is State.DISPATCHED:
                facility = self.engine.facilities.get(row.facility_code)
                unit = unit_id or (facility.unit_id if facility is not None else "")
                if not unit:
                    raise invalid_field("unit_id", "alerts.no_unit", facility=row.facility_code)
                values["unit_id"] = unit
                entry["unit_id"] = unit
            step, due_ms = due(
                self.policy, state=to_state, level=Level(row.level), raised_ms=row.raised_ms, entered_ms=now
            )
            if row.overdue and step is not None and str(step) == row.due_step:
                # The step already went overdue and is under supervision: no second timer for it.
                due_ms = None
            else:
                values["overdue"] = False
            values.update(due_ms=due_ms, due_step=str(step) if step else None)
            kind = "transitioned"
            if to_state in TERMINAL:
                values.update(is_open=False, closed_ms=now, due_ms=None, due_step=None)
                kind = "closed"
            alert = await self._record(
                session,
                row,
                kind=kind,
                values=values,
                entry=entry,
                actor=principal.subject,
                expected_version=expected_version,
            )
            if to_state in TERMINAL:
                self._forget_alert(row.fingerprint, row.id)
                if self.policy.inhibit:
                    await self._inhibition_pass(session, {row.id})  # a closed alert inhibits nothing
        audit(
            principal=principal,
            action=f"alert.{to_state}",
            resource=f"alerts/{alert_id}",
            region=row.region,
            source=source,
        )
        history = entry | {"seq": alert["seq"], "kind": kind, "at_ms": alert["updated_ms"], "actor": principal.subject}
        return alert_public(alert), history

    def _forget_alert(self, fingerprint: str, alert_id: str) -> None:
        """A closed alert no longer takes breaches; the rule state keeps firing until the condition clears."""
        st = self.engine.states.get(fingerprint)
        if st is not None and st.alert_id == alert_id:
            st.alert_id = None

    async def check_overdue(self) -> int:
        """Mark alerts past their step's time limit SUPERVISED and publish ``overdue`` (the timer's job)."""
        now = self.clock()
        # Look first without the write lock: most runs find nothing due, and must not queue behind evaluation.
        async with self.db.transaction(readonly=True) as session:
            if not await repository.due_alerts(session=session, now_ms=now, limit=1):
                return 0
        async with self.db.transaction() as session:
            rows = await repository.due_alerts(session=session, now_ms=now)
            for row in rows:
                state = State(row.state)
                await self._record(
                    session,
                    row,
                    kind="overdue",
                    values={"state": str(State.SUPERVISED), "resume_state": str(state), "overdue": True},
                    entry={"from_state": str(state), "to_state": str(State.SUPERVISED), "step": row.due_step},
                )
        return len(rows)

    # --- reads ----------------------------------------------------------------------------------------

    async def list_alerts(
        self,
        *,
        principal: Principal,
        level: str | None = None,
        state: str | None = None,
        domain: str | None = None,
        facility_code: str | None = None,
        region_prefix: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        overdue: bool = False,
        include_closed: bool = False,
        incident_id: str | None = None,
        limit: int = 100,
        page_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        require_any_role(principal, READER_ROLES)
        if principal.region is None:
            raise ProblemError(403, detail="alerts.forbidden", params={"region": region_prefix or self.region})
        after = None
        if page_token:
            raw = decode_page_token(page_token)
            ms, _, last_id = raw.partition(":")
            if not ms.isdigit() or not last_id:
                raise bad_page_token()
            after = (int(ms), last_id)
        async with self.db.transaction(readonly=True) as session:
            rows = await repository.list_alerts(
                session=session,
                region_prefixes=[scope_prefix(principal.region), region_prefix or ""],
                equals={
                    "level": level,
                    "state": state,
                    "facility_kind": domain,
                    "facility_code": facility_code,
                    "incident_id": incident_id,
                },
                include_closed=include_closed or state in ("closed", "false_alarm"),
                overdue=overdue,
                from_ms=from_ms,
                to_ms=to_ms,
                after=after,
                limit=limit + 1,
            )
        items = [alert_public(r._mapping) for r in rows[:limit]]
        token = None
        if len(rows) > limit:
            last = rows[limit - 1]
            token = encode_page_token(f"{last.raised_ms}:{last.id}")
        return items, token

    async def get_alert(self, *, alert_id: str, principal: Principal, source: str | None = None) -> dict[str, Any]:
        require_any_role(principal, READER_ROLES)
        async with self.db.transaction(readonly=True) as session:
            row = await repository.get_alert(session=session, alert_id=alert_id)
            if row is None:
                raise _not_found("alert", alert_id)
            self._visible(row.region, principal, action="alert.read", resource=f"alerts/{alert_id}", source=source)
            history = await repository.history(session=session, alert_id=alert_id)
        return alert_public(row._mapping) | {"history": [history_public(h) for h in history]}

    # --- rules --------------------------------------------------------------------------------------

    def effective_rules(self, quantity: str | None = None) -> list[dict[str, Any]]:
        """The catalogue's default rules (read-only here) of one quantity or all."""
        codes = [quantity] if quantity else self.catalogue.codes()
        out = []
        for code in codes:
            for spec in self.engine.default_rules(code):
                out.append(rule_doc(spec))
        return out

    async def list_rules(
        self, *, principal: Principal, quantity: str | None = None, origin: str | None = None
    ) -> list[dict[str, Any]]:
        require_any_role(principal, READER_ROLES)
        docs: list[dict[str, Any]] = []
        if origin in (None, "catalogue"):
            docs += self.effective_rules(quantity)
        if origin in (None, "api"):
            async with self.db.transaction(readonly=True) as session:
                for row in await repository.live_rules(session=session):
                    doc = dict(row.doc)
                    if quantity is None or any(c["quantity"] == quantity for c in doc.get("conditions", [])):
                        docs.append(doc)
        return docs

    async def get_rule(self, *, rule_id: str, principal: Principal) -> dict[str, Any]:
        require_any_role(principal, READER_ROLES)
        if rule_id.startswith("catalogue:"):
            for doc in self.effective_rules(rule_id.split(":")[1]):
                if doc["id"] == rule_id:
                    return doc
        async with self.db.transaction(readonly=True) as session:
            row = await repository.get_rule(session=session, rule_id=rule_id)
            if row is None or row.deleted:
                raise _not_found("rule", rule_id)
            history = await repository.rule_history(session=session, rule_id=rule_id)
        return dict(row.doc) | {"history": [dict(h._mapping) for h in history]}

    def _check_rule(self, doc: dict[str, Any]) -> RuleSpec:
        """Validate a rule document (422 naming what is wrong) and build its engine form."""
        for i, c in enumerate(doc.get("conditions", [])):
            try:
                self.catalogue.get(c["quantity"])
            except (KeyError, UnknownQuantityError):
                raise invalid_field(
                    f"conditions[{i}].quantity", "alerts.unknown_quantity", quantity=c["quantity"]
                ) from None
        kind = doc["kind"]
        n = len(doc.get("conditions", []))
        if kind == "threshold" and n != 1:
            raise invalid_field("conditions", "alerts.bad_rule", why="a threshold rule has exactly one condition")
        if kind == "composite" and n < 2:
            raise invalid_field("conditions", "alerts.bad_rule", why="a composite rule needs two or more conditions")
        if kind in ("composite", "no_data") and not doc.get("level"):
            raise invalid_field("level", "alerts.bad_rule", why=f"a {kind} rule needs a level")
        if kind == "no_data" and n:
            raise invalid_field("conditions", "alerts.bad_rule", why="a no-data rule has no conditions")
        try:
            return rule_spec(doc, self.policy)
        except ValidationError as exc:
            raise invalid_field("conditions", "alerts.bad_rule", why=exc.errors()[0]["msg"]) from None

    async def create_rule(
        self, *, rule_in: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        now = self.clock()
        doc = {**rule_in, "id": rule_in.get("id") or f"rule-{uuid.uuid4().hex[:12]}", "origin": "api"}
        doc.update(version=1, updated_ms=now, updated_by=principal.subject)
        if doc["region"]:
            self._visible(doc["region"], principal, action="rule.create", resource=f"rules/{doc['id']}", source=source)
        spec = self._check_rule(doc)
        async with self.db.transaction() as session:
            if await repository.get_rule(session=session, rule_id=doc["id"]) is not None:
                raise ProblemError(409, detail="alerts.duplicate_rule", params={"id": doc["id"]})
            await repository.save_rule(session=session, values=_rule_row(doc), expected_version=None)
            await repository.insert_rule_history(
                session=session,
                values={
                    "rule_id": doc["id"],
                    "version": 1,
                    "change": "created",
                    "at_ms": now,
                    "actor": principal.subject,
                    "doc": doc,
                },
            )
        self.engine.set_rule(spec)
        audit(
            principal=principal,
            action="rule.create",
            resource=f"rules/{doc['id']}",
            region=doc["region"] or None,
            source=source,
        )
        return doc

    async def update_rule(
        self,
        *,
        rule_id: str,
        changes: dict[str, Any],
        principal: Principal,
        source: str | None = None,
        delete: bool = False,
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        if rule_id.startswith("catalogue:"):
            raise ProblemError(409, detail="alerts.rule_readonly", params={"id": rule_id})
        expected = changes.pop("expected_version", None)
        now = self.clock()
        async with self.db.transaction() as session:
            row = await repository.get_rule(session=session, rule_id=rule_id)
            if row is None or row.deleted:
                raise _not_found("rule", rule_id)
            if expected is not None and expected != row.version:
                raise ProblemError(409, detail="alerts.rule_conflict", params={"id": rule_id})
            doc = {
                **dict(row.doc),
                **changes,
                "version": row.version + 1,
                "updated_ms": now,
                "updated_by": principal.subject,
            }
            if doc["region"]:
                self._visible(
                    doc["region"], principal, action="rule.update", resource=f"rules/{rule_id}", source=source
                )
            spec = self._check_rule(doc)
            values = _rule_row(doc) | {"deleted": delete}
            if not await repository.save_rule(session=session, values=values, expected_version=row.version):
                raise ProblemError(409, detail="alerts.rule_conflict", params={"id": rule_id})
            await repository.insert_rule_history(
                session=session,
                values={
                    "rule_id": rule_id,
                    "version": doc["version"],
                    "change": "deleted" if delete else "updated",
                    "at_ms": now,
                    "actor": principal.subject,
                    "doc": doc,
                },
            )
        if delete:
            self.engine.remove_rule(rule_id)
        else:
            self.engine.set_rule(spec)
        audit(
            principal=principal,
            action="rule.delete" if delete else "rule.update",
            resource=f"rules/{rule_id}",
            region=doc["region"] or None,
            source=source,
        )
        return doc

    # --- silences -----------------------------------------------------------------------------------

    async def create_silence(
        self, *, silence_in: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        now = self.clock()
        matchers = ("sensor_id", "facility_code", "facility_kind", "region", "quantity")
        doc = {k: silence_in.get(k) or "" for k in matchers}
        doc.update(
            id=str(uuid.uuid4()),
            starts_ms=silence_in.get("starts_ms") or now,
            ends_ms=int(silence_in["ends_ms"]),
            comment=silence_in.get("comment", ""),
            created_by=principal.subject,
            created_ms=now,
        )
        if not any(doc.get(k) for k in matchers) or doc["ends_ms"] <= doc["starts_ms"]:
            raise invalid_field("ends_ms", "alerts.bad_silence")
        self._visible(
            doc["region"] or self.region, principal, action="silence.create", resource="silences", source=source
        )
        # Held before the transaction so that marking the alerts already open sees it; dropped on failure.
        self._silences.append(doc)
        try:
            async with self.db.transaction() as session:
                await repository.insert_silence(session=session, values=doc)
                if doc["starts_ms"] <= now:
                    await self._resuppress(session, await self._silence_targets(session, doc))
        except BaseException:
            self._silences.remove(doc)
            raise
        if doc["starts_ms"] <= now:
            self._silences_started.add(doc["id"])
        audit(
            principal=principal,
            action="silence.create",
            resource=f"silences/{doc['id']}",
            region=doc["region"] or None,
            source=source,
        )
        return doc | {"expired": False}

    async def expire_silence(
        self, *, silence_id: str, principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        now = self.clock()
        async with self.db.transaction() as session:
            row = await repository.get_silence(session=session, silence_id=silence_id)
            if row is None:
                raise _not_found("silence", silence_id)
            self._visible(
                row.region or self.region,
                principal,
                action="silence.expire",
                resource=f"silences/{silence_id}",
                source=source,
            )
            ends = min(row.ends_ms, now)
            await repository.end_silence(session=session, silence_id=silence_id, ends_ms=ends)
            held = next((s for s in self._silences if s["id"] == silence_id), None)
            previous = held["ends_ms"] if held is not None else None
            if held is not None:
                held["ends_ms"] = ends
            try:
                # The alerts it held are un-marked unless another silence or an inhibition still holds them.
                await self._resuppress(
                    session, await repository.suppressed_by(session=session, source_ids=[silence_id])
                )
            except BaseException:
                if held is not None:
                    held["ends_ms"] = previous
                raise
        self._silences_ended.add(silence_id)
        audit(
            principal=principal,
            action="silence.expire",
            resource=f"silences/{silence_id}",
            region=row.region or None,
            source=source,
        )
        return dict(row._mapping) | {"ends_ms": ends, "expired": True}

    async def _silence_targets(self, session: Any, silence: Mapping[str, Any]) -> list[str]:
        return [r.id for r in await repository.open_alerts(session=session) if _silence_matches(silence, r._mapping)]

    async def check_silences(self) -> int:
        """Mark the open alerts of silences that started, un-mark those of silences that ended (the timer's
        job; creating and expiring a silence over the API does it at once). Returns how many alerts moved."""
        now = self.clock()
        started = [
            s for s in self._silences if s["starts_ms"] <= now < s["ends_ms"] and s["id"] not in self._silences_started
        ]
        ended = [s["id"] for s in self._silences if s["ends_ms"] <= now and s["id"] not in self._silences_ended]
        if not (started or ended):
            return 0
        async with self.db.transaction() as session:
            ids = set(await repository.suppressed_by(session=session, source_ids=ended)) if ended else set()
            for s in started:
                ids |= set(await self._silence_targets(session, s))
            moved = await self._resuppress(session, ids)
        self._silences_started |= {s["id"] for s in started}
        self._silences_ended |= set(ended)
        return moved

    async def list_silences(self, *, principal: Principal, include_expired: bool = False) -> list[dict[str, Any]]:
        require_any_role(principal, READER_ROLES)
        now = self.clock()
        async with self.db.transaction(readonly=True) as session:
            rows = await repository.silences(session=session, active_at=None if include_expired else now)
        return [dict(r._mapping) | {"expired": r.ends_ms <= now} for r in rows]


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v


def _silence_matches(s: Mapping[str, Any], alert: Mapping[str, Any]) -> bool:
    return bool(
        (not s["sensor_id"] or s["sensor_id"] == alert["sensor_id"])
        and (not s["facility_code"] or s["facility_code"] == alert["facility_code"])
        and (not s["facility_kind"] or s["facility_kind"] == alert["facility_kind"])
        and (not s["region"] or alert["region"].startswith(scope_prefix(s["region"])))
        and (not s["quantity"] or s["quantity"] == alert["quantity"])
    )


def _mark_summary(marks: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """The alert's ``suppressed`` / ``suppressed_by`` for marks taken at the same time (lowest id first)."""
    first = min((sid for _, sid in marks), default=None)
    return {"suppressed": first is not None, "suppressed_by": first}


def _risk_note(risk: Risk | None) -> str | None:
    """The history's note of a level raised by a risk source (its id, machine-readable)."""
    return f"risk_source:{risk.id} grade {risk.grade}" if risk is not None else None


def _rule_row(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["id"],
        "kind": doc["kind"],
        "enabled": doc.get("enabled", True),
        "deleted": False,
        "version": doc["version"],
        "updated_ms": doc["updated_ms"],
        "updated_by": doc["updated_by"],
        "doc": doc,
    }


def _levels(raw: dict[str, Any]) -> dict[Level, float | tuple[float, float]]:
    return {Level(k): (tuple(v) if isinstance(v, list | tuple) else float(v)) for k, v in raw.items()}  # type: ignore[misc]


def rule_spec(doc: dict[str, Any], policy: Policy) -> RuleSpec:
    """The engine form of an API rule document; raises ValidationError on inconsistent levels."""
    conditions = []
    for c in doc.get("conditions", []):
        tr = ThresholdRule(direction=c.get("direction", "above"), levels=_levels(c["levels"]))
        cond = Condition.from_threshold(
            c["quantity"],
            c.get("measure", "value"),
            tr,
            margin_pct=policy.defaults.clear_margin_pct,
            baseline_days=int(c.get("baseline_days", policy.defaults.baseline_days)),
        )
        if c.get("clear_margin") is not None:
            cond = replace(cond, clear_margin=float(c["clear_margin"]))
        conditions.append(cond)
    return RuleSpec(
        id=doc["id"],
        name=doc["name"],
        kind=doc["kind"],
        origin="api",
        conditions=tuple(conditions),
        for_ms=int(doc.get("for_s", 0)) * 1000,
        clear_for_ms=int(doc.get("clear_for_s", 0)) * 1000,
        level=Level(doc["level"]) if doc.get("level") else None,
        region=doc.get("region", ""),
        facility_kind=doc.get("facility_kind", ""),
        facility_code=doc.get("facility_code", ""),
        sensor_id=doc.get("sensor_id", ""),
        enabled=doc.get("enabled", True),
    )


def rule_doc(spec: RuleSpec) -> dict[str, Any]:
    """A default rule as the API shows it."""
    conditions = []
    for c in spec.conditions:
        levels: dict[str, Any] = {}
        for level, lo, hi in c.steps:
            levels[str(level)] = [lo, hi] if c.direction == "outside" else (lo if c.direction == "above" else hi)
        conditions.append(
            {
                "quantity": c.quantity,
                "measure": c.measure,
                "direction": c.direction,
                "levels": levels,
                "clear_margin": c.clear_margin,
                "baseline_days": c.baseline_days,
            }
        )
    return {
        "id": spec.id,
        "name": spec.name,
        "kind": spec.kind,
        "origin": spec.origin,
        "region": spec.region,
        "facility_kind": spec.facility_kind,
        "facility_code": spec.facility_code,
        "sensor_id": spec.sensor_id,
        "conditions": conditions,
        "for_s": spec.for_ms // 1000,
        "clear_for_s": spec.clear_for_ms // 1000,
        "level": str(spec.level) if spec.level else None,
        "enabled": spec.enabled,
        "version": 0,
        "updated_ms": 0,
        "updated_by": "",
    }
