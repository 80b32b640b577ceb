"""lifeline.kit.mirror against a real nats-server: snapshot + ordered consumer, newest version wins.

The snapshot source here is a dict standing for the owning service's paged reads; the events go through
JetStream as the owner's outbox relay would publish them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable

from lifeline.kit.bus import Bus
from lifeline.kit.mirror import Mirror, SnapshotLoop

Item = tuple[str, int, str]  # (key, version, value)


class Owner:
    """The owning service's current state (served as the snapshot) and its events."""

    def __init__(self, bus: Bus, subject: str) -> None:
        self.bus = bus
        self.subject = subject
        self.state: dict[str, Item] = {}
        self.snapshot_fails = 0
        self.during_snapshot: list[Item] = []

    async def change(self, key: str, value: str) -> Item:
        version = self.state[key][1] + 1 if key in self.state else 1
        item = (key, version, value)
        self.state[key] = item
        await self.publish(item)
        return item

    async def publish(self, item: Item) -> None:
        await self.bus.publish(self.subject, json.dumps(item).encode(), msg_id=f"{self.subject}:{item[0]}:{item[1]}")

    async def snapshot(self) -> AsyncIterator[Item]:
        if self.snapshot_fails:
            self.snapshot_fails -= 1
            raise ConnectionError("owner unreachable")
        items = list(self.state.values())
        for i, item in enumerate(items):
            yield item
            if i == 0:
                # Changes while the snapshot is being paged through: newer than what it already read.
                for key, value in [(k, v) for k, _, v in self.during_snapshot]:
                    await self.change(key, value)
                self.during_snapshot = []


def mirror_of(
    bus: Bus, owner: Owner, held: dict[str, Item], apply: Callable[[Item], None] | None = None
) -> Mirror[Item]:
    def decode(data: bytes) -> Item:
        key, version, value = json.loads(data)
        return (key, version, value)

    return Mirror(
        bus,
        name=f"test-{uuid.uuid4().hex[:6]}",
        subject=owner.subject,
        decode=decode,
        snapshot=owner.snapshot,
        key=lambda item: item[0],
        version=lambda item: item[1],
        apply=apply or (lambda item: held.__setitem__(item[0], item)),
        retry_s=(0.05, 0.2),
    )


async def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def owner_subject() -> str:
    return f"events.test.{uuid.uuid4().hex[:12]}"


async def test_newer_version_wins_whatever_the_order(bus: Bus) -> None:
    held: dict[str, Item] = {}
    mirror = mirror_of(bus, Owner(bus, owner_subject()), held)
    assert mirror.offer(("a", 2, "two"))
    assert not mirror.offer(("a", 1, "one"))  # late
    assert not mirror.offer(("a", 2, "two again"))  # duplicate
    assert mirror.offer(("a", 3, "three"))
    assert held["a"] == ("a", 3, "three")
    assert (mirror.applied, mirror.stale) == (2, 2)


async def test_an_item_the_receiver_refuses_is_not_held(bus: Bus) -> None:
    def apply(item: Item) -> None:
        if item[2] == "bad":
            raise ValueError("unknown quantity")

    mirror = mirror_of(bus, Owner(bus, owner_subject()), {}, apply)
    assert not mirror.offer(("a", 1, "bad"))
    assert mirror.versions == {}
    # A later good version of the same entity still gets in.
    assert mirror.offer(("a", 2, "good"))


async def test_snapshot_then_events_with_nothing_lost_in_between(bus: Bus) -> None:
    owner = Owner(bus, owner_subject())
    for key in "abc":
        await owner.change(key, f"{key}1")
    # b changes while the mirror pages through the snapshot (after it read "a", before "b" and "c").
    owner.during_snapshot = [("b", 0, "b2"), ("c", 0, "c2")]
    held: dict[str, Item] = {}
    mirror = mirror_of(bus, owner, held)
    mirror.start()
    try:
        assert await mirror.wait_ready(10)
        await wait_for(lambda: held.get("b") == ("b", 2, "b2") and held.get("c") == ("c", 2, "c2"))
        assert held["a"] == ("a", 1, "a1")
        await owner.change("d", "d1")
        await owner.change("a", "a2")
        await wait_for(lambda: held.get("d") == ("d", 1, "d1") and held["a"] == ("a", 2, "a2"))
        # A redelivered or replayed old event does not roll anything back.
        await owner.publish(("a", 1, "a1"))
        await owner.change("e", "e1")  # published after the stale one: once it is in, the stale one was seen
        await wait_for(lambda: "e" in held)
        assert held["a"] == ("a", 2, "a2")
        assert held == owner.state
    finally:
        await mirror.stop()


async def test_not_ready_until_the_owner_answers_then_ready(bus: Bus) -> None:
    owner = Owner(bus, owner_subject())
    await owner.change("a", "a1")
    owner.snapshot_fails = 3
    held: dict[str, Item] = {}
    mirror = mirror_of(bus, owner, held)
    mirror.start()
    try:
        # Events are followed even before a snapshot succeeded; ready waits for the full picture.
        assert not await mirror.wait_ready(0.05)
        assert mirror.last_error is not None and "owner unreachable" in mirror.last_error
        assert await mirror.wait_ready(10)
        assert held == owner.state
        assert mirror.last_error is None
    finally:
        await mirror.stop()


async def test_every_replica_sees_every_event(bus: Bus) -> None:
    owner = Owner(bus, owner_subject())
    replicas: list[dict[str, Item]] = [{}, {}]
    mirrors = [mirror_of(bus, owner, held) for held in replicas]
    for m in mirrors:
        m.start()
    try:
        for m in mirrors:
            assert await m.wait_ready(10)
        for i in range(20):
            await owner.change(f"k{i % 5}", f"v{i}")
        for held in replicas:
            await wait_for(lambda held=held: held == owner.state)
    finally:
        for m in mirrors:
            await m.stop()


async def test_resync_reads_a_new_snapshot(bus: Bus) -> None:
    owner = Owner(bus, owner_subject())
    await owner.change("a", "a1")
    held: dict[str, Item] = {}
    mirror = mirror_of(bus, owner, held)
    mirror.start()
    try:
        assert await mirror.wait_ready(10)
        # A change whose event never reached the bus (e.g. a restored backup): only a snapshot tells.
        owner.state["a"] = ("a", 5, "a5")
        mirror.resync()
        await wait_for(lambda: held["a"] == ("a", 5, "a5"))
        assert mirror.snapshots >= 2
    finally:
        await mirror.stop()


class Reads(SnapshotLoop):
    """A snapshot loop alone (no bus): each read takes the next outcome, an exception or a count."""

    def __init__(self, outcomes: list[int | Exception]) -> None:
        super().__init__("test-reads", retry_s=(0.01, 0.05), resync_s=3600)
        self.outcomes = outcomes
        self.calls = 0

    async def read_snapshot(self) -> int:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else 0
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


async def test_a_snapshot_loop_retries_and_stays_ready_when_a_later_read_fails() -> None:
    loop = Reads([ConnectionError("down"), ConnectionError("down"), 3])
    loop.start()
    try:
        assert await loop.wait_ready(10)
        assert (loop.calls, loop.snapshots, loop.last_error) == (3, 1, None)
        loop.outcomes = [ConnectionError("down again")] * 1000
        loop.resync()
        await wait_for(lambda: loop.last_error is not None)
        assert loop.ready  # the copy keeps serving what it has while the owner is away
        loop.outcomes = []
        await wait_for(lambda: loop.snapshots == 2)
        assert loop.last_error is None
    finally:
        await loop.stop()
