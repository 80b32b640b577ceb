"""lifeline.kit.bus against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from lifeline.kit.bus import Bus, BusUnavailable, PullConsumer
from lifeline.kit.natsserver import NatsServer


def unique_subject() -> str:
    return f"events.test.{uuid.uuid4().hex[:12]}.thing"


async def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_publish_with_same_msg_id_is_stored_once(bus: Bus) -> None:
    subject = unique_subject()
    first = await bus.publish(subject, b"a", msg_id="evt-1-" + subject)
    again = await bus.publish(subject, b"a", msg_id="evt-1-" + subject)
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
    info = await bus.js.stream_info("EVENTS", subjects_filter=subject)
    assert info.state.subjects == {subject: 1}


async def test_consumer_gets_batches_with_trace_context(bus: Bus) -> None:
    subject = unique_subject()
    got: list[Msg] = []
    batches: list[int] = []

    async def handler(msgs: list[Msg]) -> None:
        got.extend(msgs)
        batches.append(len(msgs))

    for i in range(25):
        await bus.publish(subject, str(i).encode(), msg_id=f"{subject}-{i}")
    consumer = PullConsumer(
        bus, stream="EVENTS", durable=f"t{uuid.uuid4().hex[:8]}", handler=handler, filter_subject=subject, batch=10
    )
    consumer.start()
    await wait_for(lambda: len(got) == 25)
    await consumer.stop()
    assert [m.data for m in got] == [str(i).encode() for i in range(25)]
    assert batches == [10, 10, 5]  # a backlog goes in full batches
    assert all("traceparent" in (m.headers or {}) for m in got)
    assert consumer.processed == 25


async def test_lingering_consumer_takes_a_trickle_in_few_batches_and_pulls(bus: Bus) -> None:
    # Messages arriving one at a time during the linger go to the handler together, and cost the
    # consumer a few pull requests per batch rather than one (and a status reply) per message.
    subject = unique_subject()
    batches: list[int] = []

    async def handler(msgs: list[Msg]) -> None:
        batches.append(len(msgs))

    consumer = PullConsumer(
        bus,
        stream="EVENTS",
        durable=f"l{uuid.uuid4().hex[:8]}",
        handler=handler,
        filter_subject=subject,
        batch=100,
        linger=1.0,
    )
    consumer.start()
    await bus.publish(subject, b"warm", msg_id=f"{subject}-warm")
    await wait_for(lambda: sum(batches) == 1)
    sent_before = bus.nc.stats["out_msgs"]
    for i in range(30):
        await bus.publish(subject, str(i).encode(), msg_id=f"{subject}-{i}")
        await asyncio.sleep(0.01)
    await wait_for(lambda: sum(batches) == 31)
    await consumer.stop()
    # Sent on the connection: 30 publishes, 30 acks, and the pull requests.
    pulls = bus.nc.stats["out_msgs"] - sent_before - 60
    assert len(batches) <= 4, batches
    assert pulls <= 10, pulls


async def test_lingering_consumer_hands_over_a_message_after_a_quiet_spell_at_once(bus: Bus) -> None:
    # The linger spaces batches apart; it does not hold back the first message after a quiet spell
    # (nor, under load, a batch whose predecessor took longer than the linger).
    subject = unique_subject()
    got: list[bytes] = []

    async def handler(msgs: list[Msg]) -> None:
        got.extend(m.data for m in msgs)

    consumer = PullConsumer(
        bus, stream="EVENTS", durable=f"q{uuid.uuid4().hex[:8]}", handler=handler, filter_subject=subject, linger=3600
    )
    consumer.start()
    await bus.publish(subject, b"first", msg_id=f"{subject}-first")
    await wait_for(lambda: got == [b"first"])
    await consumer.stop()


@pytest.mark.parametrize("older_pull", [False, True], ids=["quiet", "older-pull-waiting"])
async def test_a_lone_message_is_handed_over_without_waiting_out_the_pull(bus: Bus, older_pull: bool) -> None:
    # A quiet stream: the consumer's pull request waits on the server when a message arrives. It is
    # handed over then, not when the pull's timeout (here 3 s) is over — also when a pull request the
    # client no longer waits on (its fetch ended) still waits on the server: the server serves the
    # oldest first, so the message reaches the inbox through that one while the waiting fetch's own
    # request stays open, ending with no status. (nats-py's fetch of a batch then waited out its
    # timeout: alerts' lone readings on PostgreSQL took ~150 ms instead of ~5 for seconds at a time.)
    subject = unique_subject()
    durable = f"w{uuid.uuid4().hex[:8]}"
    got: list[bytes] = []
    subs: list[Any] = []

    async def handler(msgs: list[Msg]) -> None:
        got.extend(m.data for m in msgs)

    class Watched(PullConsumer):
        async def _fetch(self, sub: Any) -> list[Msg]:
            subs.append(sub)
            return await super()._fetch(sub)

    consumer = Watched(
        bus, stream="EVENTS", durable=durable, handler=handler, filter_subject=subject, batch=100, fetch_timeout=3
    )
    consumer.start()
    try:
        await wait_for(lambda: bool(subs))
        await asyncio.sleep(0.1)  # the pull is waiting
        if older_pull:
            # An older pull request into the same inbox (nats-py's): waiting, batch 10, for 10 s.
            orphan = json.dumps({"batch": 10, "expires": 10_000_000_000}).encode()
            await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.EVENTS.{durable}", orphan, reply=subs[-1]._deliver)
            await asyncio.sleep(0.2)
        for i in range(3):
            await bus.publish(subject, str(i).encode(), msg_id=f"{subject}-{i}")
            await wait_for(lambda n=i + 1: len(got) == n, timeout=1.5)
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
    assert got == [b"0", b"1", b"2"]


async def test_caught_up_once_the_stream_is_handled_through_its_newest_message(bus: Bus) -> None:
    # The last entry per subject (as alerts reads the census): caught up only once the handler has
    # returned for every entry, the newest message of the stream included. (The session's stream may
    # hold other tests' entries: the consumer takes those too.)
    key = uuid.uuid4().hex[:8]
    for subject, version in (("a", b"1"), ("a", b"2"), ("b", b"1")):
        await bus.publish(f"$KV.census.test.{key}.{subject}", version)
    release = asyncio.Event()
    seen: dict[str, bytes] = {}

    async def handler(msgs: list[Msg]) -> None:
        seen.update((m.subject, m.data) for m in msgs)
        await release.wait()

    consumer = PullConsumer(
        bus,
        stream="KV_census",
        durable=f"c{key}",
        handler=handler,
        filter_subject="$KV.census.>",
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    consumer.start()
    try:
        await wait_for(lambda: bool(seen))
        assert not await consumer.caught_up()  # in the handler: delivered, not acknowledged
        release.set()
        deadline = asyncio.get_running_loop().time() + 10
        while not await consumer.caught_up():
            assert asyncio.get_running_loop().time() < deadline, "never caught up"
            await asyncio.sleep(0.05)
        assert seen[f"$KV.census.test.{key}.a"] == b"2" and seen[f"$KV.census.test.{key}.b"] == b"1"
    finally:
        await consumer.stop()


async def test_poison_message_goes_to_dead_letter_and_others_pass(bus: Bus) -> None:
    subject = unique_subject()
    durable = f"p{uuid.uuid4().hex[:8]}"
    good: list[bytes] = []

    async def handler(msgs: list[Msg]) -> None:
        for m in msgs:
            if m.data == b"poison":
                raise ValueError("cannot digest")
        good.extend(m.data for m in msgs)

    for payload in (b"1", b"poison", b"2"):
        await bus.publish(subject, payload, msg_id=f"{subject}-{payload.decode()}")
    consumer = PullConsumer(
        bus,
        stream="EVENTS",
        durable=durable,
        handler=handler,
        filter_subject=subject,
        batch=10,
        max_deliver=3,
        backoff=(0.05,),
    )
    consumer.start()
    await wait_for(lambda: consumer.dead_lettered == 1)
    await consumer.stop()
    assert sorted(good) == [b"1", b"2"]
    dlq = await bus.js.pull_subscribe(f"dlq.EVENTS.{durable}", durable=f"d{durable}", stream="DLQ")
    [dead] = await dlq.fetch(1, timeout=5)
    assert dead.data == b"poison"
    assert dead.headers["Lifeline-Dlq-Subject"] == subject
    assert "cannot digest" in dead.headers["Lifeline-Dlq-Error"]
    assert dead.headers["Lifeline-Dlq-Deliveries"] == "3"


async def test_publish_fails_fast_while_nats_is_down_and_recovers(bus: Bus, nats_server: NatsServer) -> None:
    subject = unique_subject()
    got: list[bytes] = []

    async def handler(msgs: list[Msg]) -> None:
        got.extend(m.data for m in msgs)

    consumer = PullConsumer(
        bus, stream="EVENTS", durable=f"r{uuid.uuid4().hex[:8]}", handler=handler, filter_subject=subject
    )
    consumer.start()
    await bus.publish(subject, b"before", msg_id=f"{subject}-before")
    await wait_for(lambda: got == [b"before"])
    nats_server.stop()
    try:
        await wait_for(lambda: not bus.connected)
        with pytest.raises(BusUnavailable):
            await bus.publish(subject, b"during", msg_id=f"{subject}-during")
    finally:
        nats_server.start()
    await wait_for(lambda: bus.connected, timeout=15)
    await bus.publish(subject, b"after", msg_id=f"{subject}-after")
    await wait_for(lambda: b"after" in got, timeout=15)
    await consumer.stop()
    assert got == [b"before", b"after"]


async def test_bus_started_before_nats_connects_when_it_comes_up(tmp_path) -> None:
    server = NatsServer(store_dir=tmp_path / "late")
    b = Bus(server.url, name="late")
    await b.start()
    assert not b.connected
    with pytest.raises(BusUnavailable):
        await b.publish("events.test.x", b"x")
    server.start()
    try:
        await b.wait_ready(15)
        ack = await b.publish("events.test.late", b"x", msg_id="late-1")
        assert ack.stream == "EVENTS"
    finally:
        await b.close()
        server.stop()


def test_nats_server_runs_with_a_soft_memory_limit_unless_the_environment_sets_one(tmp_path, monkeypatch) -> None:
    def goenv(server: NatsServer) -> str | None:
        assert server.pid is not None
        env = dict(
            line.split("=", 1) for line in Path(f"/proc/{server.pid}/environ").read_text().split("\0") if "=" in line
        )
        return env.get("GOMEMLIMIT")

    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    for memory_limit, environment, expected in (
        ("160MiB", None, "160MiB"),
        (None, None, None),
        ("160MiB", "1GiB", "1GiB"),
    ):
        if environment is not None:
            monkeypatch.setenv("GOMEMLIMIT", environment)
        server = NatsServer(store_dir=tmp_path / f"mem-{memory_limit}-{environment}", memory_limit=memory_limit)
        server.start()
        try:
            assert goenv(server) == expected
        finally:
            server.stop()
