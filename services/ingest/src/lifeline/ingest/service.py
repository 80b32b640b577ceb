"""Ingest logic: validate, deduplicate, publish accepted readings; persist them; track sensor status.

The front door acknowledges a batch only after JetStream has acknowledged its accepted readings; the
persisting consumer stores them idempotently. Nothing here commits: the edges own the transactions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace

from lifeline.kit import i18n
from lifeline.kit.api import bad_page_token, decode_page_token, encode_page_token
from lifeline.kit.audit import audit, is_cross_region
from lifeline.kit.auth import Principal
from lifeline.kit.bus import Bus
from lifeline.kit.db import Database
from lifeline.kit.outbox import enqueue
from lifeline.kit.problems import ProblemError
from lifeline.kit.readings import iter_readings, message_from_rows, sensor_ids_of
from lifeline.v1 import telemetry_pb2

from . import repository
from .coalesce import GroupCommit
from .dedup import NEW, UNKNOWN, DedupIndex
from .registry import RegisteredSensor, RegistryNotReady, SensorRegistry
from .validation import Candidate, Rejection, Validator

log = logging.getLogger(__name__)
tracer = trace.get_tracer("lifeline.ingest")
meter = metrics.get_meter("lifeline.ingest")
readings_counter = meter.create_counter("lifeline_ingest_readings", description="Readings by outcome")
persisted_counter = meter.create_counter("lifeline_ingest_persisted_readings", description="Readings stored")

ACCEPTED = telemetry_pb2.READING_STATUS_ACCEPTED
DUPLICATE = telemetry_pb2.READING_STATUS_DUPLICATE
REJECTED = telemetry_pb2.READING_STATUS_REJECTED
CONFLICT = telemetry_pb2.REJECT_REASON_CONFLICT
STATUS_NAME = {ACCEPTED: "accepted", DUPLICATE: "duplicate", REJECTED: "rejected"}
_ACCEPTED_ATTRS = {"outcome": "accepted"}
# The persisting consumer inserts readings in chunks of about this many rows (one transaction).
PERSIST_CHUNK_ROWS = 5_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _unkeyed(batch: telemetry_pb2.ReadingsAccepted, keys: dict[str, int]) -> set[str]:
    return sensor_ids_of(batch) - keys.keys()


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    rejection: Rejection | None = None


ACCEPTED_OUTCOME = Outcome(ACCEPTED)
DUPLICATE_OUTCOME = Outcome(DUPLICATE)


def readings_subject(region: str) -> str:
    return f"readings.{region}"


def status_subject(region: str) -> str:
    return f"events.ingest.sensor_status.{region}"


class IngestService:
    def __init__(
        self,
        *,
        region: str,
        registry: SensorRegistry,
        validator: Validator,
        dedup: DedupIndex,
        bus: Bus,
        db: Database,
        publish_timeout_s: float = 5.0,
        max_message_readings: int = 5000,
        publish_max_in_flight: int = 1,
        persist_connection: str | None = None,
    ) -> None:
        self.region = region
        self.registry = registry
        self.validator = validator
        self.dedup = dedup
        self.bus = bus
        self.db = db
        self.publish_timeout_s = publish_timeout_s
        # persist's transactions run on this connection of db's (Database.dedicate_connection), if given.
        self.persist_connection = persist_connection
        # Serialises the storage look-up + reservation step so concurrent batches cannot both accept
        # the same late reading; the common (in-memory) path never waits on it for long.
        self._lookup_lock = asyncio.Lock()
        # The storing side's sensor keys (see models.SensorKey), only those of committed transactions.
        self.sensor_keys: dict[str, int] = {}
        # Concurrent requests' accepted readings share one message and one ack (see coalesce.py).
        self.publisher = GroupCommit(self._publish, max_items=max_message_readings, max_in_flight=publish_max_in_flight)

    async def seed(self) -> None:
        """Start the dedup index above what storage holds."""
        async with self.db.transaction() as session:
            latest = await repository.latest_device_times(session=session)
        for sensor_id, ts in latest.items():
            self.dedup.seed(sensor_id, ts)
        # Registered sensors with nothing stored start with an open window: no storage look-ups.
        for sensor in self.registry:
            if sensor.sensor_id not in latest:
                self.dedup.seed(sensor.sensor_id, None)

    async def ingest(
        self,
        items: Sequence[tuple[str, int, Any, str, Any] | Rejection],
        principal: Principal,
        *,
        source: str | None = None,
    ) -> list[Outcome]:
        """Judge every reading; publish the accepted ones; raise BusUnavailable with nothing kept.

        Until the registry is loaded every sensor would look unknown: RegistryNotReady (retry later)
        instead of rejections a client would take as final.
        """
        if not self.registry.ready:
            raise RegistryNotReady("the sensor registry is not loaded yet")
        now = now_ms()
        # Everything accepted unless judged otherwise: most batches are all new readings.
        outcomes: list[Outcome] = [ACCEPTED_OUTCOME] * len(items)
        accepted: list[Candidate] = []
        accept = accepted.append
        pending: list[tuple[int, Candidate]] = []
        claim = self.dedup.claim
        for i, c in enumerate(self.validator.check_all(items, principal, now)):
            if isinstance(c, Rejection):
                outcomes[i] = Outcome(REJECTED, c)
                continue
            prior = claim(c[0], c[1], c[2])  # sensor, device time, value
            if prior is NEW:
                accept(c)
            elif prior is UNKNOWN:
                pending.append((i, c))
            else:
                outcomes[i] = self._judge_repeat(c, prior)  # type: ignore[arg-type]
        if pending:
            async with self._lookup_lock:
                await self._resolve_in_storage(pending, outcomes, accepted)

        if accepted:
            try:
                await self.publisher.submit(accepted, now)
            except BaseException:
                release = self.dedup.release
                for c in accepted:
                    release(c.sensor_id, c.device_time_ms)
                audit(
                    principal=principal,
                    action="readings.write",
                    resource="readings",
                    region=self.region,
                    source=source,
                    outcome="unavailable",
                    count=len(items),
                )
                raise
        audit(
            principal=principal,
            action="readings.write",
            resource="readings",
            region=self.region,
            source=source,
            count=len(items),
            accepted=len(accepted),
        )
        # Accepted readings are counted per published message (_publish): one add per group commit
        # instead of one per request (~6 µs each in the SDK, a few percent of a one-reading request).
        if len(accepted) != len(items):
            for o in outcomes:
                if o.status != ACCEPTED:
                    readings_counter.add(1, {"outcome": STATUS_NAME[o.status]})
        return outcomes

    @staticmethod
    def _judge_repeat(c: Candidate, prior: float) -> Outcome:
        if prior == c.value:
            return DUPLICATE_OUTCOME
        return Outcome(REJECTED, Rejection(CONFLICT, {"original": prior}))

    async def _resolve_in_storage(
        self,
        pending: list[tuple[int, Candidate]],
        outcomes: list[Outcome],
        accepted: list[Candidate],
    ) -> None:
        """Judge readings memory cannot (below a sensor's floor) by what storage holds.

        A reading accepted earlier in this batch may have been pruned from memory already (which is
        why it came here): this batch's accepted readings count as known too.
        """
        seen_in_batch = {(c.sensor_id, c.device_time_ms): c.value for c in accepted}
        keys = [(c.sensor_id, c.device_time_ms) for _, c in pending]
        async with self.db.transaction() as session:
            stored = await repository.lookup_values(session=session, keys=keys)
        for i, c in pending:
            key = (c.sensor_id, c.device_time_ms)
            # Memory may have learned of it while we awaited storage.
            prior: Any = seen_in_batch.get(key, stored.get(key))
            if prior is None:
                mem = self.dedup.lookup(c.sensor_id, c.device_time_ms)
                prior = None if mem is NEW or mem is UNKNOWN else mem
            if prior is None:
                seen_in_batch[key] = c.value
                self.dedup.reserve(c.sensor_id, c.device_time_ms, c.value)
                accepted.append(c)
            else:
                outcomes[i] = self._judge_repeat(c, prior)

    async def _publish(self, accepted: list[Candidate], received_ms: int) -> None:
        msg = message_from_rows(self.region, accepted)
        # The id covers the readings, not the arrival time: a client's retry after a lost answer
        # republishes the same content, which JetStream then drops within its duplicate window.
        # (One serialisation without the arrival time, rather than one per reading.)
        digest = hashlib.blake2b(msg.SerializeToString(), digest_size=8)
        msg.received_time_ms = received_ms
        payload = msg.SerializeToString()
        await self.bus.publish(
            readings_subject(self.region),
            payload,
            msg_id=f"readings:{digest.hexdigest()}:{len(accepted)}",
            timeout=self.publish_timeout_s,
        )
        # Acknowledged: every submitter of the group is answered "accepted" for these.
        readings_counter.add(len(accepted), _ACCEPTED_ATTRS)

    # --- persistence (the READINGS consumer) -------------------------------------------------------

    async def persist(self, batches: Iterable[telemetry_pb2.ReadingsAccepted]) -> None:
        """Store accepted readings idempotently, move latest values, and bring silent sensors back.

        ``batches`` is iterated once, so a caller may decode its messages one at a time rather than a
        whole fetch from a backlog (consumer_batch messages of up to max_batch readings) at once."""
        # Per sensor: its row with the greatest device time, and its latest arrival.
        newest: dict[str, tuple[Any, ...]] = {}
        seen: dict[str, int] = {}
        stored = 0
        keys = self.sensor_keys
        key_of = keys
        created: dict[str, int] = {}
        with tracer.start_as_current_span("ingest.persist") as span:
            async with self.db.transaction(dedicated=self.persist_connection) as session:
                rows: list[tuple[Any, ...]] = []
                append = rows.append
                newest_get = newest.get
                seen_get = seen.get
                for batch in batches:
                    received = batch.received_time_ms
                    region = batch.region
                    for sid, ts, value, unit, quality in iter_readings(batch):
                        try:
                            key = key_of[sid]
                        except KeyError:
                            # A sensor without a known key: key every such sensor of this message at once.
                            created.update(
                                await repository.sensor_keys(
                                    session=session, sensor_ids=_unkeyed(batch, key_of), create=True
                                )
                            )
                            key_of = {**keys, **created}
                            key = key_of[sid]
                        row = (key, ts, value, unit, quality, received, region)
                        append(row)
                        if received > seen_get(sid, -1):
                            seen[sid] = received
                        cur = newest_get(sid)
                        if cur is None or ts > cur[1]:
                            newest[sid] = row
                    if len(rows) >= PERSIST_CHUNK_ROWS:
                        # In chunks: a fetch from a backlog (consumer_batch messages of up to max_batch
                        # readings) would otherwise hold 100,000 rows at once.
                        await repository.insert_readings(session=session, rows=rows)
                        stored += len(rows)
                        rows = []
                        append = rows.append
                if rows:
                    await repository.insert_readings(session=session, rows=rows)
                    stored += len(rows)
                back_online = await repository.offline_among(session=session, sensor_ids=newest.keys())
                online = telemetry_pb2.SENSOR_STATE_ONLINE
                await repository.upsert_latest(
                    session=session,
                    rows=[
                        # LATEST_COLUMNS from a READING_COLUMNS row
                        (sid, region, ts, value, unit, quality, received, seen[sid], online, received)
                        for sid, (_key, ts, value, unit, quality, received, region) in newest.items()
                    ],
                )
                for sensor_id in sorted(back_online):
                    self._enqueue_status(
                        session, sensor_id, telemetry_pb2.SENSOR_STATE_ONLINE, seen[sensor_id], seen[sensor_id]
                    )
            # Committed: only now are the keys this transaction created (or read) known to exist.
            keys.update(created)
            span.set_attribute("lifeline.readings", stored)
        persisted_counter.add(stored)

    def _enqueue_status(self, session: Any, sensor_id: str, state: int, last_seen_ms: int, changed_ms: int) -> None:
        sensor = self.registry.get(sensor_id)
        region = sensor.region if sensor else self.region
        event = telemetry_pb2.SensorStatusChanged(
            sensor_id=sensor_id, region=region, state=state, last_seen_ms=last_seen_ms, changed_ms=changed_ms
        )
        enqueue(
            session,
            subject=status_subject(region),
            payload=event,
            event_id=f"sensor-status:{sensor_id}:{state}:{changed_ms}",
        )

    async def check_offline(self, *, offline_factor: float, at_ms: int | None = None) -> list[str]:
        """Mark sensors that missed `offline_factor` reporting intervals offline and announce it."""
        now = at_ms if at_ms is not None else now_ms()
        async with self.db.transaction() as session:
            rows = await repository.all_latest(session=session)
            late = []
            for row in rows:
                sensor = self.registry.get(row.sensor_id)
                if sensor is None or row.state != telemetry_pb2.SENSOR_STATE_ONLINE:
                    continue
                if now - row.last_seen_ms > sensor.interval_s * 1000 * offline_factor:
                    late.append(row.sensor_id)
            changed = await repository.mark_offline(session=session, sensor_ids=late, now_ms=now)
            last_seen = {r.sensor_id: r.last_seen_ms for r in rows}
            for sensor_id in sorted(changed):
                self._enqueue_status(session, sensor_id, telemetry_pb2.SENSOR_STATE_OFFLINE, last_seen[sensor_id], now)
        return changed


# --- reads ------------------------------------------------------------------------------------------

QUALITY_NAMES = {0: "good", 1: "good", 2: "suspect", 3: "bad", 4: "maintenance"}
STATE_NAMES = {
    telemetry_pb2.SENSOR_STATE_ONLINE: "online",
    telemetry_pb2.SENSOR_STATE_OFFLINE: "offline",
    telemetry_pb2.SENSOR_STATE_NEVER_SEEN: "never_seen",
}
MAX_PAGE = 10_000


i18n.register(
    {
        "ingest.sensor_not_found": {"zh-CN": "传感器 {sensor} 不存在", "en": "sensor {sensor} does not exist"},
        "ingest.sensor_forbidden": {
            "zh-CN": "无权查看区域 {region} 的传感器",
            "en": "not allowed to read sensors of region {region}",
        },
        "ingest.no_reading": {"zh-CN": "传感器 {sensor} 尚无读数", "en": "sensor {sensor} has no reading yet"},
        "ingest.bad_limit": {"zh-CN": "limit 须在 1 到 {max} 之间", "en": "limit must be between 1 and {max}"},
        "ingest.bad_range": {"zh-CN": "from 必须早于 to", "en": "from must be before to"},
    }
)


class IngestQueries:
    """Region-scoped reads of stored readings, latest values and sensor status."""

    def __init__(self, *, registry: SensorRegistry, db: Database) -> None:
        self.registry = registry
        self.db = db

    def _visible_sensor(
        self, sensor_id: str, principal: Principal, source: str | None, action: str
    ) -> RegisteredSensor:
        sensor = self.registry.get(sensor_id)
        if sensor is None:
            raise ProblemError(404, detail="ingest.sensor_not_found", params={"sensor": sensor_id})
        if not principal.sees(sensor.region):
            audit(
                principal=principal,
                action=action,
                resource=f"sensor/{sensor_id}",
                region=sensor.region,
                source=source,
                outcome="forbidden",
            )
            raise ProblemError(403, detail="ingest.sensor_forbidden", params={"region": sensor.region})
        if is_cross_region(principal, sensor.region):
            audit(
                principal=principal, action=action, resource=f"sensor/{sensor_id}", region=sensor.region, source=source
            )
        return sensor

    async def readings(
        self,
        *,
        sensor_id: str,
        principal: Principal,
        from_ms: int | None,
        to_ms: int | None,
        limit: int,
        page_token: str | None,
        source: str | None = None,
    ) -> tuple[list[Any], str | None]:
        """A page of a sensor's readings ordered by device time, and the token of the next page."""
        self._visible_sensor(sensor_id, principal, source, "readings.read")
        if not 1 <= limit <= MAX_PAGE:
            raise ProblemError(400, detail="ingest.bad_limit", params={"max": MAX_PAGE})
        if from_ms is not None and to_ms is not None and from_ms >= to_ms:
            raise ProblemError(400, detail="ingest.bad_range")
        after = None
        if page_token:
            raw = decode_page_token(page_token)
            if not raw.lstrip("-").isdigit():
                raise bad_page_token()
            after = int(raw)
        async with self.db.transaction() as session:
            rows = await repository.list_readings(
                session=session, sensor_id=sensor_id, from_ms=from_ms, to_ms=to_ms, after_ms=after, limit=limit + 1
            )
        next_token = encode_page_token(str(rows[limit - 1].device_time_ms)) if len(rows) > limit else None
        return rows[:limit], next_token

    async def latest(self, *, sensor_id: str, principal: Principal, source: str | None = None) -> Any:
        """The sensor's latest reading by device time (404 if it never reported)."""
        self._visible_sensor(sensor_id, principal, source, "latest.read")
        async with self.db.transaction() as session:
            row = await repository.get_latest(session=session, sensor_id=sensor_id)
        if row is None:
            raise ProblemError(404, detail="ingest.no_reading", params={"sensor": sensor_id})
        return row

    async def statuses(
        self,
        *,
        principal: Principal,
        state: int | None,
        limit: int,
        page_token: str | None,
        source: str | None = None,
    ) -> tuple[list[telemetry_pb2.SensorStatus], str | None]:
        """Online / offline / never-seen status of the sensors the principal may see, by sensor id."""
        if not 1 <= limit <= MAX_PAGE:
            raise ProblemError(400, detail="ingest.bad_limit", params={"max": MAX_PAGE})
        after = decode_page_token(page_token) if page_token else ""
        async with self.db.transaction() as session:
            latest = {r.sensor_id: r for r in await repository.all_latest(session=session)}
        out: list[telemetry_pb2.SensorStatus] = []
        for sensor in sorted(self.registry, key=lambda s: s.sensor_id):
            if sensor.sensor_id <= after or not principal.sees(sensor.region):
                continue
            row = latest.get(sensor.sensor_id)
            st = row.state if row else telemetry_pb2.SENSOR_STATE_NEVER_SEEN
            if state and st != state:
                continue
            out.append(
                telemetry_pb2.SensorStatus(
                    sensor_id=sensor.sensor_id,
                    region=sensor.region,
                    state=st,
                    last_seen_ms=row.last_seen_ms if row else 0,
                    last_device_time_ms=row.device_time_ms if row else 0,
                    interval_s=int(sensor.interval_s),
                )
            )
            if len(out) > limit:
                break
        next_token = encode_page_token(out[limit - 1].sensor_id) if len(out) > limit else None
        regions = {s.region for s in out[:limit]}
        if any(is_cross_region(principal, r) for r in regions):
            audit(
                principal=principal,
                action="status.read",
                resource="sensors/status",
                region=principal.region,
                source=source,
                regions=sorted(regions),
            )
        return out[:limit], next_token
