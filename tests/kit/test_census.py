"""lifeline.kit.census against a real nats-server: the census stream keeps the last entry of each entity;
a follower reads them all, is ready only once the census is marked complete, follows new entries, and keeps
the newest version whatever the order.

Entries are written as assets' outbox relay writes them (lifeline.kit.testing.census); each test uses a
region of its own, so the census stream (not emptied between these tests) holds nothing of another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable

from lifeline.kit.bus import STREAMS, Bus, declare_streams
from lifeline.kit.census import (
    CENSUS_STREAM,
    CensusFollower,
    census_complete,
    census_subject,
    entity_of,
    ready_subject,
)
from lifeline.kit.testing.census import mark_census_complete, publish_census_entry

Item = tuple[str, int, str]  # (key, version, value)


def fresh_region() -> str:
    return f"34{secrets.randbelow(10**4):04d}"


async def put(bus: Bus, region: str, key: str, version: int, value: str) -> None:
    await publish_census_entry(bus, "thing", region, key, json.dumps([key, version, value, region]).encode())


def follower(
    bus: Bus, region: str, held: dict[str, Item], apply: Callable[[Item], None] | None = None
) -> CensusFollower[Item]:
    def decode(data: bytes) -> Item | None:
        # The follower reads every region's entries of its kind; a copy keeps those of its own region.
        key, version, value, of = json.loads(data)
        return (key, version, value) if of == region else None

    def keep(item: Item) -> None:
        held[item[0]] = item

    return CensusFollower(
        bus,
        name=f"test-{region}",
        entity="thing",
        region=region,
        decode=decode,
        key=lambda item: item[0],
        version=lambda item: item[1],
        apply=apply or keep,
        retry_s=(0.05, 0.2),
    )


@contextlib.asynccontextmanager
async def running(*followers: CensusFollower[Item]) -> AsyncIterator[None]:
    """The followers started and ready (the census marked complete first), stopped afterwards."""
    for f in followers:
        f.start()
    try:
        for f in followers:
            assert await f.wait_ready(10)
        yield
    finally:
        for f in followers:
            await f.stop()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_subjects_keep_ids_whole() -> None:
    assert census_subject("sensor", "340104", "HF-GAS-1") == "$KV.census.sensor.340104.HF-GAS-1"
    # A dot would split the id into tokens ("a..b" would be no subject at all): written "=2E".
    assert census_subject("sensor", "340104", "a..b") == "$KV.census.sensor.340104.a=2E=2Eb"
    assert census_subject("sensor", "340104", "a.b") != census_subject("sensor", "340104", "a:b")
    assert entity_of(census_subject("link", "340104", "L.1")) == "link"
    assert entity_of(ready_subject("340100")) == "ready"


async def test_the_stream_keeps_the_last_entry_of_each_entity(bus: Bus) -> None:
    region = fresh_region()
    for version in (1, 2, 3):
        await put(bus, region, "k1", version, f"v{version}")
    info = await bus.js.stream_info(CENSUS_STREAM, subjects_filter=f"$KV.census.thing.{region}.>")
    assert info.state.subjects == {census_subject("thing", region, "k1"): 1}
    last = await bus.js.get_last_msg(CENSUS_STREAM, census_subject("thing", region, "k1"))
    assert json.loads(last.data) == ["k1", 3, "v3", region]


async def test_ready_only_once_marked_complete_then_every_last_entry_is_held(bus: Bus) -> None:
    region = fresh_region()
    for key, version in (("a", 1), ("a", 2), ("b", 1), ("c.d", 1)):
        await put(bus, region, key, version, f"{key}{version}")
    held: dict[str, Item] = {}
    f = follower(bus, region, held)
    f.start()
    try:
        await asyncio.sleep(0.5)
        assert not f.ready and not held  # a census not marked complete may be a part of one
        assert not await census_complete(bus, region)
        await mark_census_complete(bus, region, thing=3)
        assert await f.wait_ready(10)
        assert held == {"a": ("a", 2, "a2"), "b": ("b", 1, "b1"), "c.d": ("c.d", 1, "c.d1")}
        assert f.applied == 3  # the last entry of each, not the history
        # Followed after that.
        await put(bus, region, "b", 2, "b2")
        await put(bus, region, "e", 1, "e1")
        await until(lambda: held.get("b") == ("b", 2, "b2") and "e" in held)
    finally:
        await f.stop()


async def test_an_empty_census_marked_complete_is_ready(bus: Bus) -> None:
    region = fresh_region()
    await mark_census_complete(bus, region)
    f = follower(bus, region, {})
    async with running(f):
        assert f.ready and not f.applied


async def test_newer_version_wins_whatever_the_order(bus: Bus) -> None:
    region = fresh_region()
    await mark_census_complete(bus, region)
    held: dict[str, Item] = {}
    f = follower(bus, region, held)
    async with running(f):
        for version in (3, 1, 2, 3):  # late and repeated entries (a replay, an old relay retry)
            await put(bus, region, "k", version, f"v{version}")
        await until(lambda: f.stale == 3)
        assert held["k"] == ("k", 3, "v3")


async def test_every_replica_reads_every_entry(bus: Bus) -> None:
    region = fresh_region()
    await put(bus, region, "a", 1, "a1")
    await mark_census_complete(bus, region)
    copies: list[dict[str, Item]] = [{}, {}]
    async with running(*(follower(bus, region, held) for held in copies)):
        await put(bus, region, "b", 1, "b1")
        await until(lambda: all("b" in held for held in copies))
        assert copies[0] == copies[1] == {"a": ("a", 1, "a1"), "b": ("b", 1, "b1")}


async def test_an_item_the_receiver_refuses_is_not_held_and_the_rest_are(bus: Bus) -> None:
    region = fresh_region()
    held: dict[str, Item] = {}

    def picky(item: Item) -> None:
        if item[2] == "bad":
            raise ValueError("unknown quantity")
        held[item[0]] = item

    await put(bus, region, "a", 1, "bad")
    await put(bus, region, "b", 1, "b1")
    await mark_census_complete(bus, region)
    f = follower(bus, region, held, apply=picky)
    async with running(f):
        assert held == {"b": ("b", 1, "b1")} and "a" not in f.versions
        await put(bus, region, "a", 2, "a2")  # a later, acceptable version is taken
        await until(lambda: "a" in held)


async def test_a_census_stream_lost_and_made_anew_is_followed_again(bus: Bus) -> None:
    """nats-server lost its store: the follower's consumer is gone; it reads the new census as it comes."""
    region = fresh_region()
    await put(bus, region, "a", 1, "a1")
    await mark_census_complete(bus, region)
    held: dict[str, Item] = {}
    f = follower(bus, region, held)
    f.check_s = 0.2
    async with running(f):
        await bus.js.delete_stream(CENSUS_STREAM)
        await declare_streams(bus.js, [s for s in STREAMS if s.name == CENSUS_STREAM])
        # As assets writes it anew: every entity again, newer versions among them.
        await put(bus, region, "a", 2, "a2")
        await put(bus, region, "b", 1, "b1")
        await until(lambda: held.get("a") == ("a", 2, "a2") and "b" in held)
        assert f.ready  # it kept serving what it had meanwhile
