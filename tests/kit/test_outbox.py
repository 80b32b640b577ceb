"""lifeline.kit.outbox: enqueue in the business transaction, relay to a real JetStream, survive outages."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from lifeline.kit.db import Database, create_engine
from lifeline.kit.migrations import migrate
from lifeline.kit.natsserver import NatsServer
from lifeline.kit.outbox import _RELAY_LOCK_KEY, OutboxRelay, enqueue, outbox_table
from lifeline.kit.testing.db import terminate_other_sessions
from lifeline.v1.common_pb2 import Region

ENV_PY = "from lifeline.kit.migrations import run_env\n\nrun_env(target_metadata=None)\n"
FIRST_MIGRATION = """
from alembic import op

from lifeline.kit.outbox import create_outbox_table, drop_outbox_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table(op)


def downgrade() -> None:
    drop_outbox_table(op)
"""


async def migrated(url: str, tmp_path: Path) -> Database:
    location = tmp_path / "migrations"
    (location / "versions").mkdir(parents=True, exist_ok=True)
    (location / "env.py").write_text(ENV_PY)
    (location / "versions" / "0001_outbox.py").write_text(FIRST_MIGRATION)
    await migrate(url, location)
    return Database.from_url(url)


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await migrated(database_url, tmp_path)
    yield database
    await database.dispose()


@dataclass
class Recorder:
    """A publish function that records what it was asked to publish; optionally slow or failing."""

    delay: float = 0.0
    fail: Callable[[str], bool] = lambda _msg_id: False
    calls: list[tuple[str, bytes, str, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail(msg_id):
            raise ConnectionError("bus down")
        self.calls.append((subject, payload, msg_id, headers))

    @property
    def ids(self) -> list[str]:
        return [c[2] for c in self.calls]


@dataclass
class Stream:
    """A JetStream stream of its own for one test, and a publish function like the bus's."""

    nc: Client
    js: JetStreamContext
    name: str
    prefix: str

    async def publish(self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]) -> None:
        # A short timeout: while NATS is down the client buffers the request and times out; the
        # buffered copy may still be stored after the reconnect, which the msg-id dedup absorbs.
        await self.js.publish(subject, payload, timeout=0.5, headers={**headers, "Nats-Msg-Id": msg_id})

    async def messages(self) -> list[tuple[str, str, bytes]]:
        """(subject, msg id, payload) of every message stored in the stream, in stream order."""
        info = await self.js.stream_info(self.name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await self.js.get_msg(self.name, seq)
            assert msg.headers is not None and msg.subject is not None and msg.data is not None
            out.append((msg.subject, msg.headers["Nats-Msg-Id"], msg.data))
        return out


@pytest.fixture
async def stream(nats_server: NatsServer) -> AsyncIterator[Stream]:
    if not nats_server.running:
        nats_server.start()
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=2)
    js = nc.jetstream()
    token = secrets.token_hex(4)
    name, prefix = f"OUTBOXTEST_{token}", f"outboxtest.{token}"
    await js.add_stream(name=name, subjects=[f"{prefix}.>"], duplicate_window=120.0)
    yield Stream(nc, js, name, prefix)
    try:
        await asyncio.wait_for(js.delete_stream(name), 5)
    finally:
        await nc.close()


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def enqueue_many(db: Database, subject: str, n: int) -> list[str]:
    async with db.transaction() as session:
        return [enqueue(session, subject=subject, payload=f"event {i}".encode()) for i in range(n)]


async def outbox_rows(db: Database) -> list[sa.Row[tuple[str, object, int, str | None]]]:
    t = outbox_table
    async with db.engine.connect() as conn:
        result = await conn.execute(sa.select(t.c.id, t.c.sent_at, t.c.attempts, t.c.last_error).order_by(t.c.seq))
        return list(result.all())  # type: ignore[arg-type]


# -- enqueue ------------------------------------------------------------------------------------------


async def test_enqueue_in_rolled_back_transaction_publishes_nothing(db: Database) -> None:
    recorder = Recorder()
    relay = OutboxRelay(db, recorder)
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            enqueue(session, subject="events.test.created", payload=b"x")
            await session.flush()
            raise RuntimeError("the business change failed")
    assert await relay.depth() == 0
    assert await relay.relay_once() == 0
    assert recorder.calls == []


async def test_enqueue_returns_ids_and_serializes_protobuf(db: Database) -> None:
    async with db.transaction() as session:
        given = enqueue(session, subject="events.test.a", payload=Region(code="340100"), event_id="evt-1")
        generated = enqueue(session, subject="events.test.b", payload=b"raw", headers={"Lifeline-Kind": "b"})
    assert given == "evt-1"
    assert len(generated) == 36
    recorder = Recorder()
    await OutboxRelay(db, recorder).relay_once()
    assert [(c[0], c[2]) for c in recorder.calls] == [
        ("events.test.a", "evt-1"),
        ("events.test.b", generated),
    ]
    assert Region.FromString(recorder.calls[0][1]).code == "340100"
    assert recorder.calls[1][3]["Lifeline-Kind"] == "b"


@pytest.mark.parametrize("subject", ["", "events.*", "events.>", "events..x", "has space", ".lead"])
def test_enqueue_rejects_unpublishable_subjects(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        enqueue(None, subject=subject, payload=b"")  # type: ignore[arg-type]


async def test_trace_context_travels_with_the_event(db: Database) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        trace_id = span.get_span_context().trace_id
        async with db.transaction() as session:
            enqueue(session, subject="events.test.traced", payload=b"x")

    seen: list[int] = []

    async def publish(subject: str, payload: bytes, msg_id: str, headers: dict[str, str]) -> None:
        assert headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
        # The relay publishes inside the captured context, so a bus's producer span joins the trace.
        seen.append(trace.get_current_span().get_span_context().trace_id)

    await OutboxRelay(db, publish).relay_once()
    assert seen == [trace_id]


# -- relay --------------------------------------------------------------------------------------------


async def test_relay_publishes_in_order_and_marks_sent(db: Database, stream: Stream) -> None:
    expected: list[str] = []
    for n in (10, 1, 25):
        expected += await enqueue_many(db, f"{stream.prefix}.thing", n)
    relay = OutboxRelay(db, stream.publish, batch_size=7)
    assert await relay.depth() == 36

    published = 0
    while count := await relay.relay_once():
        published += count
    assert published == 36
    assert await relay.depth() == 0

    messages = await stream.messages()
    assert [m[1] for m in messages] == expected
    assert messages[0][0] == f"{stream.prefix}.thing" and messages[0][2] == b"event 0"
    rows = await outbox_rows(db)
    assert [r.id for r in rows] == expected
    assert all(r.sent_at is not None and r.attempts == 1 and r.last_error is None for r in rows)


async def test_commit_wakes_the_relay(db: Database) -> None:
    recorder = Recorder()
    relay = OutboxRelay(db, recorder, poll_interval=60)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # the relay found nothing and sleeps for a minute
        ids = await enqueue_many(db, "events.test.woken", 3)

        async def delivered() -> bool:
            return recorder.ids == ids

        await wait_until(delivered, 5, "the commit to wake the relay")
    finally:
        await relay.stop()
        await task


async def test_publish_errors_are_retried_in_order(db: Database) -> None:
    ids = await enqueue_many(db, "events.test.flaky", 6)
    failures = {ids[2]: 2}

    def fail(msg_id: str) -> bool:
        if failures.get(msg_id, 0) > 0:
            failures[msg_id] -= 1
            return True
        return False

    recorder = Recorder(fail=fail)
    relay = OutboxRelay(db, recorder, backoff_initial=0.01, backoff_max=0.05, poll_interval=0.05)
    assert await relay.relay_once() == 2  # stops at the failing event instead of skipping it
    assert relay.last_error == "ConnectionError: bus down"
    rows = await outbox_rows(db)
    assert rows[2].attempts == 1 and rows[2].last_error == "ConnectionError: bus down"
    assert rows[3].attempts == 0 and rows[3].sent_at is None

    task = asyncio.create_task(relay.run())
    try:

        async def drained() -> bool:
            return await relay.depth() == 0

        await wait_until(drained, 5, "the relay to get past the failing event")
    finally:
        await relay.stop()
        await task
    assert recorder.ids == ids
    rows = await outbox_rows(db)
    assert rows[2].attempts == 3 and rows[2].last_error is None
    assert relay.consecutive_failures == 0


async def test_stop_finishes_the_batch_in_flight(db: Database) -> None:
    ids = await enqueue_many(db, "events.test.slow", 20)
    recorder = Recorder(delay=0.02)
    relay = OutboxRelay(db, recorder)
    task = asyncio.create_task(relay.run())

    async def started() -> bool:
        return len(recorder.calls) > 0

    await wait_until(started, 5, "the first publish")
    await relay.stop()
    assert task.done() and not relay.running
    assert recorder.ids == ids
    assert await relay.depth() == 0


async def test_stop_before_the_task_runs(db: Database) -> None:
    relay = OutboxRelay(db, Recorder())
    task = asyncio.create_task(relay.run())
    await relay.stop()  # the task has not started yet
    async with asyncio.timeout(5):
        await task
    # ...and the relay can be run again afterwards.
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.05)
    assert relay.running
    await relay.stop()
    await task


async def test_purge_deletes_only_old_sent_events(db: Database) -> None:
    await enqueue_many(db, "events.test.old", 3)
    relay = OutboxRelay(db, Recorder())
    await relay.relay_once()
    await enqueue_many(db, "events.test.unsent", 2)
    assert await relay.purge(timedelta(days=1)) == 0
    assert await relay.purge(timedelta(0)) == 3
    assert len(await outbox_rows(db)) == 2
    assert await relay.depth() == 2


@pytest.mark.slow
async def test_relay_survives_nats_down(db: Database, stream: Stream, nats_server: NatsServer) -> None:
    relay = OutboxRelay(
        db,
        stream.publish,
        batch_size=10,
        poll_interval=0.1,
        backoff_initial=0.1,
        backoff_max=0.5,
        publish_timeout=2.0,
    )
    nats_server.stop()
    try:
        expected = await enqueue_many(db, f"{stream.prefix}.down", 15)
        task = asyncio.create_task(relay.run())

        async def retrying() -> bool:
            return relay.consecutive_failures >= 3

        await wait_until(retrying, 20, "the relay to fail against a stopped NATS")
        # More events while NATS is still down, committed and waiting behind the first ones.
        expected += await enqueue_many(db, f"{stream.prefix}.down", 10)
        expected += await enqueue_many(db, f"{stream.prefix}.down", 5)
        rows = await outbox_rows(db)
        assert all(r.sent_at is None for r in rows)
        assert rows[0].attempts >= 2 and rows[0].last_error
        assert await relay.depth() == 30
        assert not task.done()
    finally:
        nats_server.start()

    try:

        async def drained() -> bool:
            return await relay.depth() == 0

        await wait_until(drained, 30, "the relay to publish everything once NATS is back")
    finally:
        await relay.stop()
        await task

    messages = await stream.messages()
    ids = [m[1] for m in messages]
    assert sorted(ids) == sorted(expected), "every event arrives"
    assert len(ids) == len(set(ids)), "exactly once (JetStream dropped repeated msg ids)"
    assert ids == expected, "in the order they were enqueued"
    assert relay.consecutive_failures == 0 and relay.last_error is None


# -- PostgreSQL replicas ------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_two_relays_on_postgres_publish_each_event_once(postgres_url: str, tmp_path: Path) -> None:
    db = await migrated(postgres_url, tmp_path)
    try:
        expected: list[str] = []
        for _ in range(10):
            expected += await enqueue_many(db, "events.test.replicas", 30)
        shared = Recorder(delay=0.001)  # both replicas append to one log, in publish order
        relays = [OutboxRelay(db, shared, batch_size=10, poll_interval=0.01) for _ in range(2)]
        tasks = [asyncio.create_task(r.run()) for r in relays]
        try:

            async def drained() -> bool:
                return await relays[0].depth() == 0

            await wait_until(drained, 30, "two relays to drain the outbox")
        finally:
            for r in relays:
                await r.stop()
            await asyncio.gather(*tasks)
        assert len(shared.ids) == len(set(shared.ids)), "no event published twice"
        assert shared.ids == expected, "published once each, in order, across replicas"
        assert sum(r.published_total for r in relays) == 300
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_relay_yields_to_the_replica_holding_the_lock(postgres_url: str, tmp_path: Path) -> None:
    db = await migrated(postgres_url, tmp_path)
    try:
        await enqueue_many(db, "events.test.standby", 3)
        recorder = Recorder()
        relay = OutboxRelay(db, recorder)
        async with db.transaction() as other_replica:
            conn = await other_replica.connection()
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_RELAY_LOCK_KEY)))
            assert await relay.relay_once() == 0  # does not wait, does not publish
        assert await relay.relay_once() == 3
        assert len(recorder.calls) == 3
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_relay_recovers_when_postgres_drops_its_connection(postgres_url: str, tmp_path: Path) -> None:
    db = await migrated(postgres_url, tmp_path)
    recorder = Recorder()
    relay = OutboxRelay(db, recorder, poll_interval=0.05, backoff_initial=0.05, backoff_max=0.2)
    task = asyncio.create_task(relay.run())
    try:
        expected = await enqueue_many(db, "events.test.restart", 5)

        async def published() -> bool:
            return len(recorder.ids) == len(expected)

        await wait_until(published, 10, "the first events")
        # What a PostgreSQL restart does: every session ends, the relay's (and its lock) included.
        await terminate_other_sessions(db.engine.url.render_as_string(hide_password=False))
        for _ in range(3):
            try:
                expected += await enqueue_many(db, "events.test.restart", 5)
            except sa.exc.DBAPIError as exc:  # a pooled connection the restart killed: rolled back
                assert exc.connection_invalidated
        await wait_until(published, 10, "the events committed after the restart")
        assert recorder.ids == expected, "each once, in order"
        assert relay.running
    finally:
        await relay.stop()
        await task
        await db.dispose()
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            held = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
    finally:
        await engine.dispose()
    assert held == 0, "a stopped relay holds no lock"


# -- hand-off: a relay that has caught up publishes what the commits hand it -----------------------


async def test_handed_events_are_published_once_in_commit_order(sqlite_url: str, tmp_path: Path) -> None:
    db = await migrated(sqlite_url, tmp_path)
    recorder = Recorder()
    relay = OutboxRelay(db, recorder, poll_interval=60)
    try:
        before = await enqueue_many(db, "events.test.before", 3)  # unsent when the relay starts: read back
        task = asyncio.create_task(relay.run())

        async def write(i: int) -> str:
            # Sessions (aiosqlite's threads) and core transactions (the loop's thread) commit interleaved.
            if i % 2:
                async with db.core_transaction() as tx:
                    return enqueue(tx, subject="events.test.handed", payload=f"core {i}".encode())
            async with db.transaction() as session:
                return enqueue(session, subject="events.test.handed", payload=f"session {i}".encode())

        for _ in range(3):
            await asyncio.gather(*(write(i) for i in range(20)))
            await asyncio.sleep(0.02)

        async def drained() -> bool:
            return await relay.depth() == 0

        await wait_until(drained, 10, "the relay to publish every event")
        await relay.stop()
        await task
    finally:
        await db.dispose()
    db = Database.from_url(sqlite_url)
    try:
        rows = await outbox_rows(db)
    finally:
        await db.dispose()
    assert len(rows) == 63 and [r.id for r in rows[:3]] == before
    assert recorder.ids == [r.id for r in rows]  # in commit order, each once
    assert all(r.sent_at is not None and r.attempts == 1 and r.last_error is None for r in rows)


async def test_handed_event_that_fails_to_publish_is_retried_from_the_table_in_order(
    sqlite_url: str, tmp_path: Path
) -> None:
    db = await migrated(sqlite_url, tmp_path)
    failing: set[str] = set()
    recorder = Recorder(fail=lambda msg_id: msg_id in failing)
    relay = OutboxRelay(db, recorder, poll_interval=60, backoff_initial=0.05, backoff_max=0.1)
    task = asyncio.create_task(relay.run())
    try:
        first = await enqueue_many(db, "events.test.first", 2)

        async def published_first() -> bool:
            return recorder.ids == first

        await wait_until(published_first, 5, "the first events")
        failing.add("second-1")
        async with db.core_transaction() as tx:
            second = [enqueue(tx, subject="events.test.second", payload=b"x", event_id=f"second-{i}") for i in range(3)]

        async def failed_once() -> bool:
            return relay.consecutive_failures > 0

        await wait_until(failed_once, 5, "the publish to fail")
        third = await enqueue_many(db, "events.test.third", 2)  # committed during the back-off
        failing.clear()

        async def drained() -> bool:
            return await relay.depth() == 0

        await wait_until(drained, 5, "the relay to recover")
        rows = await outbox_rows(db)
    finally:
        await relay.stop()
        await task
        await db.dispose()
    assert recorder.ids == first + second + third
    attempts = {r.id: r.attempts for r in rows}
    # The failed one was tried again (from the table) until it went; none after it went before it.
    assert attempts["second-1"] >= 2 and attempts["second-0"] == 1 and attempts["second-2"] == 1
    assert all(r.sent_at is not None for r in rows)
