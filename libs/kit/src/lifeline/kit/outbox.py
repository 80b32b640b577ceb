"""The transactional outbox: events are rows written in the business transaction, published afterwards.

A service calls ``enqueue(session, ...)`` (or ``enqueue(tx, ...)`` in a ``Database.core_transaction()``)
inside the transaction that changes its state, so the event exists if and only if the change committed.
``OutboxRelay`` publishes unsent rows to JetStream in insertion order with ``Nats-Msg-Id`` = event id,
marks them sent, and retries with capped exponential back-off while NATS is unreachable. A crash between
publish and mark re-publishes the event; JetStream's msg-id duplicate window and idempotent consumers
absorb that, so nothing is lost and nothing is applied twice.

Hand-off (SQLite): the commit hands the relay the events it wrote, and a relay that has caught up with
the table publishes them as they come instead of reading them back (a read transaction less between
commit and publish). Any doubt (a publish or database error, a bulk ``enqueue_many``, a quiet poll
interval, too many handed at once) sends it back to reading the table in order, which is what finds
what a crash or an outage left unsent. The commits reach it in commit order (``kit.db``), so the order
is kept within the process. Across processes it is not: on PostgreSQL, replicas of a service write to
one outbox and only reading it in order under the relay lock keeps their events in order, so the hand-off
is off there by default; pass ``handoff=False`` too if several processes write events of the same
aggregate to one SQLite file.

PostgreSQL: one relay replica at a time publishes, the one holding the relay lock (a session-level
advisory lock on a connection of the relay's own); it reads a batch and marks it sent with one
autocommit statement each, so a commit's events are published one round trip after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract, inject
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lifeline.kit.db import CoreTransaction, Database, partial_index

if TYPE_CHECKING:
    from alembic.operations import Operations

__all__ = [
    "OUTBOX_PENDING_KEY",
    "OutboxEvent",
    "OutboxRelay",
    "PublishFn",
    "create_outbox_table",
    "drop_outbox_table",
    "enqueue",
    "enqueue_many",
    "outbox_metadata",
    "outbox_table",
]

log = logging.getLogger(__name__)

OUTBOX_TABLE = "outbox"
# Transaction info key set by enqueue(); the commit listeners get the transaction's info, which is how a
# relay learns right after the commit that there is something to publish: the list of events written
# (handed over), or True when they are to be read back from the table (enqueue_many's bulk writes).
OUTBOX_PENDING_KEY = "lifeline.outbox.pending"
# PostgreSQL advisory lock held by the one relay replica that publishes at a time (see _claim_pg).
_RELAY_LOCK_KEY = zlib.crc32(b"lifeline.kit.outbox.relay")
_LAST_ERROR_MAX = 2000
_EVENT_ID_MAX = 255
# A NATS publish subject: dot-separated tokens without wildcards or whitespace.
_SUBJECT_RE = re.compile(r"^[^.*>\s]+(\.[^.*>\s]+)*$")

PublishFn = Callable[[str, bytes, str, dict[str, str]], Awaitable[None]]
"""``publish(subject, payload, msg_id, headers)``: the bus's JetStream publish; raises on failure."""


class _OutboxBase(DeclarativeBase):
    # Kept apart from the services' SQLModel.metadata: the table is created by each service's first
    # migration through create_outbox_table(), never by metadata.create_all of a service.
    metadata = sa.MetaData()


# BIGINT does not alias SQLite's rowid, so it would not autoincrement there; INTEGER does.
_SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class OutboxEvent(_OutboxBase):
    """One event waiting to be (or already) published; ``seq`` orders publication."""

    __tablename__ = OUTBOX_TABLE
    __table_args__ = (
        sa.UniqueConstraint("id", name="uq_outbox_id"),
        # Partial index: the relay's scan stays small however many sent rows are retained.
        partial_index("ix_outbox_unsent", "seq", where="sent_at IS NULL"),
    )

    seq: Mapped[int] = mapped_column(_SEQ_TYPE, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(sa.String(_EVENT_ID_MAX))
    subject: Mapped[str] = mapped_column(sa.String(255))
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


outbox_metadata = _OutboxBase.metadata
outbox_table: sa.Table = OutboxEvent.__table__  # type: ignore[assignment]


def create_outbox_table(op: Operations) -> None:
    """Create the outbox table (version 1) from a service's first Alembic migration."""
    # Spelled out rather than derived from OutboxEvent: a migration must keep creating the same
    # schema even after the model evolves (a later change gets its own helper and migration).
    op.create_table(
        OUTBOX_TABLE,
        sa.Column("seq", _SEQ_TYPE, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("id", name="uq_outbox_id"),
    )
    op.create_index(
        "ix_outbox_unsent",
        OUTBOX_TABLE,
        ["seq"],
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )


def drop_outbox_table(op: Operations) -> None:
    """Drop the outbox table (the downgrade of ``create_outbox_table``)."""
    op.drop_index("ix_outbox_unsent", table_name=OUTBOX_TABLE)
    op.drop_table(OUTBOX_TABLE)


def enqueue(
    session: AsyncSession | CoreTransaction,
    *,
    subject: str,
    payload: bytes | Message,
    event_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Add an event to the outbox in the caller's transaction (written with its commit); return the event id."""
    values = _event_values(subject, payload, event_id, headers, datetime.now(UTC))
    if isinstance(session, CoreTransaction):
        session.insert_at_commit(outbox_table, values)
    else:
        session.add(OutboxEvent(**values))
    handed = session.info.get(OUTBOX_PENDING_KEY)
    if handed is not True:
        row = _Row(seq=0, id=values["id"], subject=subject, payload=values["payload"], headers=values["headers"])
        session.info.setdefault(OUTBOX_PENDING_KEY, []).append(row)
    return str(values["id"])


async def enqueue_many(
    session: AsyncSession | CoreTransaction, events: Sequence[tuple[str, bytes | Message, str | None]]
) -> None:
    """``enqueue`` for many ``(subject, payload, event_id)`` at once: one multi-row insert (bulk writes)."""
    if not events:
        return
    now = datetime.now(UTC)
    rows = [_event_values(subject, payload, event_id, None, now) for subject, payload, event_id in events]
    if isinstance(session, CoreTransaction):
        await session.execute(sa.insert(outbox_table), rows)
    else:
        await (await session.connection()).execute(sa.insert(outbox_table), rows)
    # Not handed over (a bulk write may be thousands of events): the relay reads them back in order.
    session.info[OUTBOX_PENDING_KEY] = True


def _event_values(
    subject: str, payload: bytes | Message, event_id: str | None, headers: Mapping[str, str] | None, now: datetime
) -> dict[str, Any]:
    if not _SUBJECT_RE.match(subject):
        raise ValueError(f"not a publishable NATS subject: {subject!r}")
    data = payload.SerializeToString() if isinstance(payload, Message) else bytes(payload)
    event_id = event_id or str(uuid.uuid4())
    if len(event_id) > _EVENT_ID_MAX:
        raise ValueError(f"event id longer than {_EVENT_ID_MAX} characters: {event_id[:40]}…")
    carrier: dict[str, str] = dict(headers or {})
    # W3C traceparent/tracestate of the current span, so the consumer continues this trace.
    inject(carrier)
    return {"id": event_id, "subject": subject, "payload": data, "headers": carrier, "created_at": now, "attempts": 0}


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Failure:
    seq: int
    event_id: str
    error: str


@dataclass(frozen=True, slots=True)
class _BatchResult:
    fetched: int
    published: int
    failure: _Failure | None


class OutboxRelay:
    """Publishes outbox rows in order, marks them sent, and retries with capped back-off until it can."""

    def __init__(
        self,
        db: Database,
        publish: PublishFn,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        publish_timeout: float = 10.0,
        retention: timedelta | None = timedelta(days=7),
        purge_interval: float = 3600.0,
        handoff: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._db = db
        self._publish = publish
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._publish_timeout = publish_timeout
        self._retention = retention
        self._purge_interval = purge_interval
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._last_purge = 0.0
        # None: on for SQLite only (see the module's docstring).
        self._handoff = db.dialect == "sqlite" if handoff is None else handoff
        self._handed: deque[_Row] = deque()
        # True once a read found the table drained: from then on, what commits is handed over.
        self._caught_up = False
        # Ids a read published lately: the same events may also have been handed (committed as it read).
        self._read_ids: deque[str] = deque(maxlen=10 * batch_size)
        self._read_id_set: set[str] = set()
        # PostgreSQL: this relay's own connection, in autocommit, holding the relay lock (see _claim_pg).
        self._pg_conn: AsyncConnection | None = None
        self._pg_owner = False
        self.published_total = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        """True while ``run()`` is looping."""
        return self._running

    def notify(self) -> None:
        """Wake the relay now (after a commit that enqueued); a relay backing off keeps backing off."""
        self._wake.set()

    def _on_commit(self, info: dict[Any, Any]) -> None:
        pending = info.get(OUTBOX_PENDING_KEY)
        if not pending:
            return
        if pending is True or not self._handoff or len(self._handed) > 10 * self._batch_size:
            self._fall_back()
        else:
            self._handed.extend(pending)
        self.notify()

    def _fall_back(self) -> None:
        """Read the table in order again (what is handed meanwhile is in it too)."""
        self._caught_up = False
        self._handed.clear()

    async def run(self) -> None:
        """Relay until ``stop()``; publish errors and database errors are retried, never raised."""
        if self._running:
            raise RuntimeError("this OutboxRelay is already running")
        self._running = True
        # _stop_requested is not cleared here: a stop() that came before this task got to run must
        # still stop it (it is cleared on the way out, so the relay can be run again).
        self._stopped.clear()
        # Commits made while no relay listened were not handed to anyone: read the table first.
        self._fall_back()
        remove_listener = self._db.add_commit_listener(self._on_commit)
        try:
            while not self._stop_requested.is_set():
                # Cleared before reading, so a notify() that lands during the batch is not lost.
                self._wake.clear()
                try:
                    if self._caught_up:
                        result = await self._relay_handed()
                    else:
                        result = await self._relay_batch()
                except Exception as exc:  # the database itself is unavailable: back off like NATS
                    self._fall_back()
                    self._note_failure(f"database: {type(exc).__name__}: {exc}")
                    log.warning("outbox relay cannot read the outbox: %s", exc)
                    await self._sleep(self._backoff_delay(), wakeable=False)
                    continue
                if result.failure is not None:
                    self._fall_back()
                    await self._sleep(self._backoff_delay(), wakeable=False)
                    continue
                await self._purge_if_due()
                if result.fetched >= self._batch_size or (self._caught_up and self._handed):
                    continue  # more may be waiting
                if not await self._sleep(self._poll_interval, wakeable=True):
                    # A quiet interval: read the table (another process may have written to it).
                    self._fall_back()
        finally:
            remove_listener()
            await self._release_pg()
            self._running = False
            self._stop_requested.clear()
            self._stopped.set()

    async def stop(self) -> None:
        """Stop ``run()`` after the batch in flight and wait until it has returned."""
        self._stop_requested.set()
        self._wake.set()
        if self._running:
            await self._stopped.wait()

    async def relay_once(self) -> int:
        """Publish one batch of unsent events; return how many were published (errors are recorded)."""
        try:
            result = await self._relay_batch()
        finally:
            if not self._running:
                await self._release_pg()  # a one-off batch keeps neither the connection nor the lock
        return result.published

    async def depth(self) -> int:
        """Number of events not yet published (for metrics and readiness)."""
        t = outbox_table
        async with self._db.transaction(readonly=True) as session:
            conn = await session.connection()
            count = await conn.scalar(sa.select(sa.func.count()).select_from(t).where(t.c.sent_at.is_(None)))
        return int(count or 0)

    async def purge(self, older_than: timedelta) -> int:
        """Delete events published more than ``older_than`` ago; return how many were deleted."""
        t = outbox_table
        cutoff = datetime.now(UTC) - older_than
        async with self._db.transaction() as session:
            conn = await session.connection()
            result = await conn.execute(sa.delete(t).where(t.c.sent_at.is_not(None), t.c.sent_at < cutoff))
        return int(result.rowcount or 0)

    # -- internals -------------------------------------------------------------------------------

    def _backoff_delay(self) -> float:
        exponent = max(self.consecutive_failures - 1, 0)
        delay = min(self._backoff_max, self._backoff_initial * (2 ** min(exponent, 30)))
        # Jitter so replicas and services do not hammer a recovering NATS in lockstep.
        jittered: float = delay * random.uniform(0.8, 1.0)
        return jittered

    def _note_failure(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = error

    async def _sleep(self, delay: float, *, wakeable: bool) -> bool:
        """Sleep until ``delay`` passed (False) or the event is set (True)."""
        event = self._wake if wakeable else self._stop_requested
        try:
            async with asyncio.timeout(delay):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def _purge_if_due(self) -> None:
        if self._retention is None:
            return
        now = time.monotonic()
        if self._last_purge and now - self._last_purge < self._purge_interval:
            return
        self._last_purge = now
        try:
            deleted = await self.purge(self._retention)
        except Exception as exc:  # purging is housekeeping; publishing must go on
            log.warning("outbox purge failed: %s", exc)
            return
        if deleted:
            log.info("outbox purged %d sent events older than %s", deleted, self._retention)

    def _select_unsent(self) -> sa.Select[Any]:
        t = outbox_table
        return (
            sa.select(t.c.seq, t.c.id, t.c.subject, t.c.payload, t.c.headers)
            .where(t.c.sent_at.is_(None))
            .order_by(t.c.seq)
            .limit(self._batch_size)
        )

    async def _relay_batch(self) -> _BatchResult:
        # Handed events committed before this read are in it; those committed after are handed again.
        self._handed.clear()
        if self._db.dialect == "postgresql":
            result = await self._relay_batch_pg()
        else:
            result = await self._relay_batch_sqlite()
        if self._handoff and result.failure is None and result.fetched < self._batch_size:
            self._caught_up = True
        return self._account(result)

    async def _relay_handed(self) -> _BatchResult:
        rows: list[_Row] = []
        while self._handed and len(rows) < self._batch_size:
            row = self._handed.popleft()
            if row.id not in self._read_id_set:
                rows.append(row)
        if not rows:
            return _BatchResult(0, 0, None)
        published, failure = await self._publish_rows(rows)
        async with self._db.core_transaction() as tx:
            await _record(tx, [r.id for r in published], failure, by_id=True)
        return self._account(_BatchResult(len(rows), len(published), failure))

    def _note_read(self, published: Sequence[_Row]) -> None:
        if not self._handoff:
            return
        for row in published:
            if len(self._read_ids) == self._read_ids.maxlen:
                self._read_id_set.discard(self._read_ids[0])
            self._read_ids.append(row.id)
            self._read_id_set.add(row.id)

    def _account(self, result: _BatchResult) -> _BatchResult:
        self.published_total += result.published
        if result.failure is not None:
            failure = result.failure
            self._note_failure(failure.error)
            log.warning(
                "outbox publish failed (event %s, %d in a row), will retry: %s",
                failure.event_id,
                self.consecutive_failures,
                failure.error,
            )
        else:
            if self.consecutive_failures:
                log.info("outbox relay recovered after %d failures", self.consecutive_failures)
            self.consecutive_failures = 0
            self.last_error = None
        return result

    async def _relay_batch_pg(self) -> _BatchResult:
        try:
            conn = await self._claim_pg()
            if conn is None:
                return _BatchResult(0, 0, None)
            rows = _rows(await conn.execute(self._select_unsent()))
            published, failure = await self._publish_rows(rows)
            await _record(conn, [r.seq for r in published], failure)
        except Exception:
            await self._release_pg()  # a broken connection; the lock went with it or goes now
            raise
        self._note_read(published)
        return _BatchResult(len(rows), len(published), failure)

    async def _claim_pg(self) -> AsyncConnection | None:
        """This relay's connection once it holds the relay lock; None while another replica holds it.

        One replica publishes at a time: concurrent relays publishing disjoint batches would reorder
        events. The lock is a session-level advisory lock on a connection of the relay's own, so the
        owner reads, publishes and marks with one autocommit statement each (the transaction-level lock
        cost a pool checkout, BEGIN, the lock and COMMIT on every batch, between a commit and its publish).
        The lock goes with the session: when the owner stops, dies or loses its connection, a standby
        takes it on its next round.
        """
        if self._pg_conn is None:
            conn = await self._db.engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                # Marking sent need not wait for the WAL flush (~1 ms, between one batch and the next): a
                # mark lost in a PostgreSQL crash only republishes the event, which the msg-id dedup and
                # idempotent consumers absorb (the same as a relay dying between publish and mark). The
                # events themselves are written by the services' transactions, which wait for the flush.
                await conn.exec_driver_sql("SET synchronous_commit = off")
            except BaseException:
                await conn.close()
                raise
            self._pg_conn = conn
            self._pg_owner = False
        if not self._pg_owner:
            locked = await self._pg_conn.scalar(sa.select(sa.func.pg_try_advisory_lock(_RELAY_LOCK_KEY)))
            self._pg_owner = bool(locked)
        return self._pg_conn if self._pg_owner else None

    async def _release_pg(self) -> None:
        """Give up the connection and with it the relay lock."""
        conn, self._pg_conn = self._pg_conn, None
        self._pg_owner = False
        if conn is None:
            return
        try:
            # Closed rather than returned to the pool: a pooled session would keep holding the lock.
            await conn.invalidate()
            await conn.close()
        except Exception as exc:  # already broken: the server ends the session, and the lock with it
            log.debug("outbox relay connection closed with an error: %s", exc)

    async def _relay_batch_sqlite(self) -> _BatchResult:
        # SQLite has one writer: holding the write lock while waiting on NATS would stall every
        # writer of the service, so read in a read-only transaction, publish, then mark briefly.
        async with self._db.transaction(readonly=True) as session:
            rows = _rows(await (await session.connection()).execute(self._select_unsent()))
        if not rows:
            return _BatchResult(0, 0, None)
        published, failure = await self._publish_rows(rows)
        self._note_read(published)
        async with self._db.core_transaction() as tx:
            await _record(tx, [r.seq for r in published], failure)
        return _BatchResult(len(rows), len(published), failure)

    async def _publish_rows(self, rows: Sequence[_Row]) -> tuple[list[_Row], _Failure | None]:
        published: list[_Row] = []
        for row in rows:
            # Publish inside the trace context captured at enqueue: a bus that injects the current
            # context (and opens a producer span) then continues the request's trace, not a new one.
            token = otel_context.attach(extract(row.headers))
            try:
                async with asyncio.timeout(self._publish_timeout):
                    await self._publish(row.subject, row.payload, row.id, dict(row.headers))
            except Exception as exc:
                # Stop at the first failure: publishing later rows first would break the order.
                return published, _Failure(row.seq, row.id, f"{type(exc).__name__}: {exc}")
            finally:
                otel_context.detach(token)
            published.append(row)
        return published, None


def _rows(result: sa.Result[Any]) -> list[_Row]:
    return [
        _Row(seq=r.seq, id=r.id, subject=r.subject, payload=bytes(r.payload), headers=dict(r.headers or {}))
        for r in result
    ]


async def _record(
    conn: AsyncConnection | CoreTransaction,
    published: Sequence[int] | Sequence[str],
    failure: _Failure | None,
    *,
    by_id: bool = False,
) -> None:
    """Mark the published events sent and count the failed attempt (by seq, or by event id if handed)."""
    t = outbox_table
    key = t.c.id if by_id else t.c.seq
    if published:
        await conn.execute(
            sa.update(t)
            .where(key.in_(published))
            .values(sent_at=datetime.now(UTC), attempts=t.c.attempts + 1, last_error=None)
        )
    if failure is not None:
        await conn.execute(
            sa.update(t)
            .where(key == (failure.event_id if by_id else failure.seq))
            .values(attempts=t.c.attempts + 1, last_error=failure.error[:_LAST_ERROR_MAX])
        )
