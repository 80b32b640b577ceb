"""Live alert events for dashboards: one ordered consumer per replica, fanned out to the watchers.

Every replica follows ``events.alerts.>`` with an ephemeral ordered consumer (so each sees every event,
and nats-py re-creates it from the last sequence after a hiccup), keeps the recent events for resumes
(read back from the stream for a while at start, so a restart does not break them), and hands each
event to the watchers whose region scope and filters admit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from lifeline.kit.auth import Principal
from lifeline.kit.bus import Bus
from lifeline.kit.problems import FieldError, ProblemError
from lifeline.kit.runtime import TaskPart
from lifeline.v1 import alerts_pb2

from .consumers import EVENTS_SUBJECT, decode
from .settings import NotifySettings

log = logging.getLogger(__name__)

Item = tuple[str, alerts_pb2.AlertEvent]
_REGION_PREFIX = re.compile(r"^\d{1,6}$")


class Reset:
    """Yielded first when a resume point is unknown (too old): the watcher should reload its state."""


RESET = Reset()


@dataclass(frozen=True)
class WatchFilter:
    """What a watcher asks for; empty fields admit everything in its region scope."""

    # Warning level numbers (I = 1 ... IV = 4): this level or more severe.
    min_level: int = 0
    domain: int = 0
    region_prefix: str = ""
    kinds: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.region_prefix and not _REGION_PREFIX.match(self.region_prefix):
            raise ProblemError(
                422,
                errors=[
                    FieldError(
                        "region_prefix",
                        "invalid",
                        "validation.string_pattern_mismatch",
                        {"pattern": _REGION_PREFIX.pattern},
                    )
                ],
            )

    def admits(self, principal: Principal, event: alerts_pb2.AlertEvent) -> bool:
        a = event.alert
        return (
            principal.region is not None
            and principal.sees(a.region)
            and a.region.startswith(self.region_prefix)
            and (not self.min_level or 0 < a.level <= self.min_level)
            and (not self.domain or a.facility_kind == self.domain)
            and (not self.kinds or event.kind in self.kinds)
        )


@dataclass(eq=False)
class Watcher:
    """One connected watcher: a bounded queue of the events it admits."""

    principal: Principal
    filter: WatchFilter
    limit: int
    items: deque[Item | Reset] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Fell too far behind (or the replica is stopping): the stream ends, the client reconnects.
    closed: bool = False

    def offer(self, item: Item) -> bool:
        if self.closed:
            return False
        if len(self.items) >= self.limit:
            self.close()
            return False
        if self.filter.admits(self.principal, item[1]):
            self.items.append(item)
            self.wake.set()
        return True

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def stream(self, heartbeat_s: float | None = None) -> AsyncIterator[Item | Reset | None]:
        """The watcher's events in order; None after `heartbeat_s` without one (time for a heartbeat)."""
        while True:
            while self.items:
                yield self.items.popleft()
            if self.closed:
                return
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), heartbeat_s)
            except TimeoutError:
                yield None


class LiveFeed(TaskPart):
    """The replica's live view of alert events (a background part of the service)."""

    task_name = "alerts-live"

    def __init__(self, bus: Bus, settings: NotifySettings) -> None:
        self.bus = bus
        self.settings = settings
        self.recent: deque[Item] = deque(maxlen=settings.replay_events)
        self.watchers: set[Watcher] = set()
        self._started = datetime.now(UTC)
        self.subscribed = asyncio.Event()

    def watch(self, principal: Principal, flt: WatchFilter, last_event_id: str | None = None) -> Watcher:
        """Register a watcher now (no await: nothing slips between the replay and the live events)."""
        w = Watcher(principal, flt, self.settings.watcher_queue)
        if last_event_id:
            ids = [eid for eid, _ in self.recent]
            if last_event_id in ids:
                for item in list(self.recent)[ids.index(last_event_id) + 1 :]:
                    w.offer(item)
            else:
                w.items.append(RESET)
        self.watchers.add(w)
        return w

    def unwatch(self, watcher: Watcher) -> None:
        watcher.close()
        self.watchers.discard(watcher)

    def _fan_out(self, item: Item) -> None:
        self.recent.append(item)
        for w in list(self.watchers):
            if not w.offer(item):
                self.watchers.discard(w)

    async def _on_msg(self, msg: Msg) -> None:
        item = decode(msg)
        if item is None:
            return
        if msg.metadata.timestamp < self._started:
            # Read back for resumes only: watchers asked for events from now on.
            self.recent.append(item)
            return
        self._fan_out(item)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            sub: Any = None
            try:
                await self.bus.wait_ready(timeout=3600)
                sub = await self.bus.js.subscribe(
                    EVENTS_SUBJECT,
                    stream="EVENTS",
                    cb=self._on_msg,
                    ordered_consumer=True,
                    idle_heartbeat=2.0,
                    config=self._config(),
                )
                self.subscribed.set()
                delay = 0.5
                await asyncio.Event().wait()  # until cancelled; the ordered consumer heals itself
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live alert feed: %r; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    def _config(self) -> ConsumerConfig:
        window = self.settings.replay_window_s
        if not window or not self.settings.replay_events:
            return ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        # The recent past seeds the resume buffer; watchers registered meanwhile get those events too.
        return ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=self._started - timedelta(seconds=window)
        )

    async def stop(self) -> None:
        """Stop following and end every watcher's stream."""
        for w in list(self.watchers):
            self.unwatch(w)
        await self._cancel_task()
