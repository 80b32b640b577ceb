"""The instance's census on the bus: the latest version of every assets entity, one message each.

Inside an instance services talk over JetStream (DESIGN §2), and that includes the census other services
keep a copy of (ingest the sensors it validates against, alerts the facilities, sensors, units, links and
risk sources it evaluates with). The assets service writes each entity version, through its outbox, to
the stream ``KV_census`` — laid out as a JetStream key-value bucket "census": subject
``$KV.census.<entity>.<region>.<id>``, one message kept per subject, no age limit — and, once every
entity of its region is there, a :class:`~lifeline.v1.assets_pb2.CensusComplete` on
``$KV.census.ready.<region>``. A copy reads the last message of every subject and then follows new ones,
so a service starts, and becomes ready, from the bus alone: while assets is down too, and without a
service account to call it.

:class:`CensusFollower` is that copy for a process that keeps it in memory (every replica reads the whole
census with an ordered consumer of its own). A service that keeps it in its database reads it with a
durable consumer instead (``PullConsumer(deliver_policy=LAST_PER_SUBJECT)``) and asks
:func:`census_complete` before trusting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from lifeline.kit.bus import Bus
from lifeline.kit.runtime import TaskPart
from lifeline.kit.tasks import raise_if_cancelled

__all__ = [
    "CENSUS_PREFIX",
    "CENSUS_STREAM",
    "CensusFollower",
    "census_complete",
    "census_subject",
    "entity_of",
    "ready_subject",
]

log = logging.getLogger(__name__)

CENSUS_STREAM = "KV_census"
CENSUS_PREFIX = "$KV.census."
READY = "ready"

T = TypeVar("T")


def census_subject(entity: str, region: str, entity_id: str) -> str:
    """Where an entity's census entry lives: ``$KV.census.<entity>.<region>.<id>``.

    A dot in the id (ids may hold one) would split it into subject tokens, and ``a..b`` would not be a
    subject at all: dots are written ``=2E`` (ids never hold ``=``, so no two ids share a subject)."""
    return f"{CENSUS_PREFIX}{entity}.{region}.{entity_id.replace('.', '=2E')}"


def ready_subject(region: str) -> str:
    """Where the marker of a complete census of ``region`` lives."""
    return f"{CENSUS_PREFIX}{READY}.{region}"


def entity_of(subject: str) -> str:
    """The entity kind of a census subject (``ready`` for the completeness marker)."""
    return subject[len(CENSUS_PREFIX) :].split(".", 1)[0]


async def census_complete(bus: Bus, region: str) -> bool:
    """Whether assets has marked the census of ``region`` complete on the bus (errors propagate)."""
    try:
        await bus.js.get_last_msg(CENSUS_STREAM, ready_subject(region))
    except nats.js.errors.NotFoundError:
        return False
    return True


class CensusFollower(TaskPart, Generic[T]):
    """An in-memory copy of one entity kind of the census, kept current; newest version wins.

    ``decode`` turns an entry's payload into an item (None: not for this copy, e.g. another region);
    ``key`` and ``version`` identify an item's entity and its version; ``apply`` takes every item newer
    than the one held and must not await (it runs between two messages). ``ready`` turns true once the
    census of ``region`` is marked complete and every entry there was when reading began has been
    offered, and stays true: the copy keeps serving what it has while NATS is away. The ordered consumer
    resumes by itself after a hiccup; a broken one is made anew (everything offered again, and only
    newer versions applied), with backoff.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        name: str,
        entity: str,
        region: str,
        decode: Callable[[bytes], T | None],
        key: Callable[[T], str],
        version: Callable[[T], int],
        apply: Callable[[T], None],
        retry_s: tuple[float, float] = (0.5, 15.0),
        check_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.name = name
        self.task_name = f"census-{name}"
        self.entity = entity
        self.region = region
        self.retry_s = retry_s
        self.check_s = check_s
        self._decode = decode
        self._key = key
        self._version = version
        self._apply = apply
        self.versions: dict[str, int] = {}
        self.applied = 0
        self.stale = 0
        self.last_error: str | None = None
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        """True once the complete census has been read."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the complete census; True if it is in."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    def offer(self, item: T) -> bool:
        """Apply ``item`` if its version is newer than the one held; True if it was applied."""
        key, version = self._key(item), self._version(item)
        if version <= self.versions.get(key, -1):
            self.stale += 1
            return False
        try:
            self._apply(item)
        except Exception as exc:
            # One item the receiver cannot take (e.g. an unknown quantity) must not stop the others.
            log.error("%s: %s version %d not applied: %r", self.name, key, version, exc)
            return False
        self.versions[key] = version
        self.applied += 1
        return True

    async def _run(self) -> None:
        delay = self.retry_s[0]
        while True:
            raise_if_cancelled()
            began = asyncio.get_running_loop().time()
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if asyncio.get_running_loop().time() - began > self.retry_s[1]:
                    delay = self.retry_s[0]  # it had been following: a new failure, not the same one
                self.last_error = repr(exc)
                log.warning("%s: census not readable: %r; retrying in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_s[1])

    async def _follow(self) -> None:
        await self.bus.wait_ready(timeout=3600)
        if not self.ready:
            # Until assets marked the census complete, what is there may be a part of it.
            delay = self.retry_s[0]
            while not await census_complete(self.bus, self.region):
                log.info("%s: the census of %s is not complete on the bus yet", self.name, self.region)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_s[1])
        caught_up = asyncio.Event()

        async def on_entry(msg: Msg) -> None:
            try:
                item = self._decode(msg.data)
            except Exception as exc:
                log.error("%s: undecodable census entry on %s: %r", self.name, msg.subject, exc)
                item = None
            if item is not None:
                self.offer(item)
            if msg.metadata.num_pending == 0:
                caught_up.set()

        # Ordered consumer: ephemeral, flow-controlled, made anew by nats-py from the last stream sequence
        # seen when it stalls (the heartbeat tells), so entries are neither skipped nor shared with
        # other replicas. The last entry of every subject first, then each new one.
        sub = await self.bus.js.subscribe(
            f"{CENSUS_PREFIX}{self.entity}.>",
            stream=CENSUS_STREAM,
            cb=on_entry,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=2.0,
        )
        try:
            info = await sub.consumer_info()
            if not info.num_pending and not sub.delivered:
                caught_up.set()  # nothing of this kind in the census
            await caught_up.wait()
            if not self.ready:
                log.info("%s: census read (%d entries applied)", self.name, self.applied)
                self._ready.set()
            while True:
                # nats-py remakes a stalled ordered consumer by itself; one that is gone for good (a
                # nats-server that lost its store, say) surfaces here, and the census is read anew.
                await asyncio.sleep(self.check_s)
                await sub.consumer_info()
                raise_if_cancelled()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
