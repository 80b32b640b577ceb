"""Group commit for the front door's JetStream publishes.

A one-reading request costs one JetStream publish and one ack wait, which is most of its CPU and
caps the rate at what nats-py moves in messages. Here the accepted readings of concurrent requests
share one ``ReadingsAccepted`` message: a submission joins the open group, the group is published
when a publish slot is free (at the latest on the next turn of the event loop, so a lone request
waits for nothing), and every submitter is answered when JetStream acknowledged that message — or
gets its error, and then nothing of the group was kept. While one publish is in flight the next
group fills up, so the heavier the load, the more readings a message carries.

Retries stay safe: a retried reading the front door already accepted is answered ``duplicate`` by
the dedup index without publishing; a reading whose group failed was released there, so its retry
is published again in another group (with another message id), and if the failed publish had in
fact been stored (a lost ack), the persisting consumer's upsert by (sensor, device time) keeps one row.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from opentelemetry import trace

T = TypeVar("T")

tracer = trace.get_tracer("lifeline.ingest")


class _Group(Generic[T]):
    __slots__ = ("context", "done", "items", "links", "stamp", "submissions")

    def __init__(self, loop: asyncio.AbstractEventLoop, context: contextvars.Context, stamp: int) -> None:
        self.items: list[T] = []
        self.done: asyncio.Future[None] = loop.create_future()
        # The first submitter's context: the group's publish continues its trace ...
        self.context = context
        # ... and links the others' spans, so each request's trace leads to the message.
        self.links: list[trace.Link] = []
        self.stamp = stamp
        self.submissions = 0


class GroupCommit(Generic[T]):
    """Coalesces concurrent submissions into one ``publish(items, stamp)`` call per group.

    ``max_items`` bounds a group (a submission larger than that is a group of its own);
    ``max_in_flight`` is how many publishes may wait for their ack at once.
    """

    def __init__(
        self,
        publish: Callable[[list[T], int], Awaitable[None]],
        *,
        max_items: int,
        max_in_flight: int = 1,
        span_name: str = "ingest.publish_group",
    ) -> None:
        self._publish = publish
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self.span_name = span_name
        self._waiting: deque[_Group[T]] = deque()
        self._in_flight = 0
        self._scheduled = False
        # Observable for tests and metrics: groups published, items in them.
        self.groups = 0
        self.items = 0

    async def submit(self, items: list[T], stamp: int) -> None:
        """Publish ``items`` with others'; return once JetStream acknowledged them, or raise its error.

        ``stamp`` (the arrival time) of the group's first submission is the group's.
        """
        loop = asyncio.get_running_loop()
        group = self._waiting[-1] if self._waiting else None
        if group is None or (group.items and len(group.items) + len(items) > self.max_items):
            group = _Group(loop, contextvars.copy_context(), stamp)
            self._waiting.append(group)
        else:
            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                group.links.append(trace.Link(ctx))
        group.items.extend(items)
        group.submissions += 1
        if not self._scheduled and self._in_flight < self.max_in_flight:
            # Not at once: requests that arrived in the same turn of the loop join this group first.
            self._scheduled = True
            loop.call_soon(self._flush)
        # Shielded: a cancelled request must not cancel its group's publish for the others.
        await asyncio.shield(group.done)

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self.max_in_flight:
            group = self._waiting.popleft()
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(group), context=group.context)
            task.add_done_callback(self._finished)

    def _finished(self, _task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, group: _Group[T]) -> None:
        try:
            with tracer.start_as_current_span(self.span_name, links=group.links) as span:
                if span.is_recording():
                    span.set_attributes({"lifeline.items": len(group.items), "lifeline.submissions": group.submissions})
                await self._publish(group.items, group.stamp)
        except asyncio.CancelledError:
            group.done.cancel()
            raise
        except Exception as exc:
            group.done.set_exception(exc)
        else:
            self.groups += 1
            self.items += len(group.items)
            group.done.set_result(None)
