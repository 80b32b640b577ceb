"""The instance's message bus: NATS JetStream.

One place declares the streams (``STREAMS``); ``Bus`` connects (and keeps reconnecting), publishes with a
message id (JetStream drops a repeat inside the stream's duplicate window) and W3C trace context in the
headers, and runs durable pull consumers (``PullConsumer``): batches, ack, nak with backoff, a dead-letter
subject for poison messages after N deliveries, and a graceful drain on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, PubAck, StorageType, StreamConfig
from opentelemetry import trace

from lifeline.kit.tasks import cancel_and_wait, raise_if_cancelled
from lifeline.kit.telemetry import consume_span, extract_trace_context, inject_trace_headers, publish_span

log = logging.getLogger(__name__)

DAY = 86_400.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream the instance needs, with limits that keep nats-server's footprint bounded."""

    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int
    duplicate_window_s: float = 120.0
    description: str = ""
    # A stream of latest values (a key-value bucket): this many messages kept per subject, -1 all.
    max_msgs_per_subject: int = -1

    def config(self) -> StreamConfig:
        """The nats-py StreamConfig for this spec (file storage)."""
        latest_values = self.max_msgs_per_subject > 0
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            storage=StorageType.FILE,
            max_msgs_per_subject=self.max_msgs_per_subject,
            # A full bucket refuses new values rather than dropping the oldest (an entity nobody changed
            # lately would silently vanish from it); a bucket is read by the last value of each subject.
            discard=DiscardPolicy.NEW if latest_values else DiscardPolicy.OLD,
            allow_direct=latest_values or None,
            allow_rollup_hdrs=latest_values,
        )


# Every stream of an instance, declared once. Subjects carry the region so that a consumer (or, later,
# federation) can filter by it.
STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        "READINGS",
        ("readings.>",),
        max_age_s=7 * DAY,
        max_bytes=1024 * MIB,
        duplicate_window_s=600.0,
        description="Accepted sensor readings, one message per accepted batch: readings.<region>",
    ),
    StreamSpec(
        "EVENTS",
        ("events.>",),
        max_age_s=30 * DAY,
        max_bytes=512 * MIB,
        duplicate_window_s=2 * 3600.0,
        description="Domain events from the services' outboxes: events.<service>.<kind>.<region>",
    ),
    StreamSpec(
        "DEVICES",
        ("devices.*.*.readings",),
        max_age_s=1 * DAY,
        max_bytes=256 * MIB,
        description="Raw device messages from the MQTT listener: devices.<region>.<client>.readings",
    ),
    StreamSpec(
        "DLQ",
        ("dlq.>",),
        max_age_s=30 * DAY,
        max_bytes=128 * MIB,
        description="Poison messages moved aside after too many deliveries: dlq.<stream>.<consumer>",
    ),
    StreamSpec(
        # A JetStream key-value bucket ("census") by its layout, written through assets' outbox
        # (lifeline.kit.census): the latest state of every entity, kept for good.
        "KV_census",
        ("$KV.census.>",),
        max_age_s=0,
        max_bytes=256 * MIB,
        max_msgs_per_subject=1,
        description="The census: the latest version of each assets entity, $KV.census.<entity>.<region>.<id>",
    ),
)


class BusUnavailable(Exception):
    """NATS (or JetStream) cannot take the message now; the caller should retry later."""


class Bus:
    """A JetStream connection that reconnects forever and fails fast while it is down."""

    def __init__(self, url: str, *, name: str, user: str | None = None, password: str | None = None) -> None:
        self.url = url
        self.name = name
        self._user = user
        self._password = password
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._streams: Sequence[StreamSpec] = ()

    async def start(self, streams: Sequence[StreamSpec] = STREAMS, *, wait: float | None = None) -> None:
        """Connect in the background (retrying until NATS is up); optionally wait up to `wait` seconds."""
        self._streams = streams
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect_forever(), name=f"bus-connect-{self.name}")
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until connected with streams declared, or raise BusUnavailable."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError as exc:
            raise BusUnavailable(f"NATS at {self.url} not reachable within {timeout}s") from exc

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                nc = await nats.connect(
                    self.url,
                    name=self.name,
                    user=self._user,
                    password=self._password,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                js = nc.jetstream(timeout=5)
                await declare_streams(js, self._streams)
                self._nc, self._js = nc, js
                self._ready.set()
                log.info("bus connected", extra={"nats_url": self.url})
                return
            except Exception as exc:
                log.warning("bus not reachable at %s, retrying: %r", self.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error: %r", exc)

    async def _on_disconnected(self) -> None:
        log.warning("bus disconnected", extra={"nats_url": self.url})

    async def _on_reconnected(self) -> None:
        log.info("bus reconnected", extra={"nats_url": self.url})
        # A restarted server with a fresh store has lost the streams; declaring is idempotent.
        if self._js is not None:
            with contextlib.suppress(Exception):
                await declare_streams(self._js, self._streams)

    @property
    def connected(self) -> bool:
        """True while the connection is up (not reconnecting)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BusUnavailable("bus not connected yet")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusUnavailable("bus not connected yet")
        return self._js

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> PubAck:
        """Publish to JetStream and wait for its ack; raise BusUnavailable if it cannot be stored now."""
        if not self.connected:
            raise BusUnavailable("NATS is not connected")
        hdrs = dict(headers or {})
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        with publish_span(f"publish {subject}", **{"messaging.destination.name": subject}):
            inject_trace_headers(hdrs)
            try:
                return await self.js.publish(subject, payload, timeout=timeout, headers=hdrs)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as exc:
                raise BusUnavailable(f"JetStream did not acknowledge {subject}: {exc!r}") from exc

    async def publish_core(self, subject: str, payload: bytes, headers: Mapping[str, str] | None = None) -> None:
        """Fire-and-forget publish on core NATS (replies to devices, live notifications)."""
        if not self.connected:
            raise BusUnavailable("NATS is not connected")
        await self.nc.publish(subject, payload, headers=dict(headers) if headers else None)

    async def close(self) -> None:
        """Drain and close the connection; stop trying to connect."""
        if self._connect_task is not None and not self._connect_task.done():
            await cancel_and_wait(self._connect_task)
        nc, self._nc, self._js = self._nc, None, None
        self._ready.clear()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.drain()


async def declare_streams(js: JetStreamContext, specs: Sequence[StreamSpec] = STREAMS) -> None:
    """Create the streams, or update them to the declared limits."""
    for spec in specs:
        cfg = spec.config()
        try:
            info = await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(cfg)
            continue
        current = info.config
        if (
            sorted(current.subjects or []) != sorted(cfg.subjects or [])
            or current.max_age != cfg.max_age
            or current.max_bytes != cfg.max_bytes
            or current.duplicate_window != cfg.duplicate_window
            or current.max_msgs_per_subject != cfg.max_msgs_per_subject
        ):
            # Re-adding an existing stream counts its storage reservation twice; update it instead.
            await js.update_stream(cfg)


BatchHandler = Callable[[list[Msg]], Awaitable[None]]
# After the linger: how long the pull for what accumulated may take (the server answers at once, with
# messages or with "no messages"; more only on a machine too busy to read the answer in time).
FILL_FETCH_TIMEOUT_S = 0.1


class PullConsumer:
    """A durable pull consumer that hands batches to a handler and acks them when it returns.

    A failed batch is retried message by message so that one poison message does not hold back the
    rest; a message that still fails is nak'ed with a growing delay, and after `max_deliver` deliveries
    it is moved to ``dlq.<stream>.<durable>`` (with the error in a header) and terminated.
    Replicas of a service share the durable, so they split the work.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        stream: str,
        durable: str,
        handler: BatchHandler,
        filter_subject: str | None = None,
        batch: int = 256,
        fetch_timeout: float = 1.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
        ack_wait: float = 30.0,
        max_ack_pending: int = 20_000,
        linger: float = 0.0,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> None:
        self.bus = bus
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.filter_subject = filter_subject
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.max_deliver = max_deliver
        self.backoff = tuple(backoff)
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        # Where a new durable starts: every message (ALL), or the last of each subject (LAST_PER_SUBJECT:
        # a stream of latest values, such as the census, read whole and then followed).
        self.deliver_policy = deliver_policy
        # Start a batch at most every `linger` seconds, letting messages accumulate in between: one
        # transaction per many messages is far cheaper for a writer than one per message, at the price
        # of up to that much latency. Measured from the previous batch's start, not from the first
        # message: a batch whose handling took `linger` or longer is followed at once by the next,
        # so under load the writer is never idle while messages wait; after a quiet spell the first
        # message goes at once.
        self.linger = linger
        self._last_batch_at = -math.inf
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._behind = 0  # messages waiting behind the last one fetched
        self.processed = 0
        self.dead_lettered = 0

    @property
    def dlq_subject(self) -> str:
        return f"dlq.{self.stream}.{self.durable}"

    async def pending(self) -> int:
        """Messages of the stream this consumer has not yet processed (not delivered or not acked)."""
        info = await self.bus.js.consumer_info(self.stream, self.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def caught_up(self) -> bool:
        """Whether this consumer has processed the stream up to its newest message, as it stood just now.

        Stronger than no message pending: the consumer acknowledged, in order, through the stream's last
        sequence read before asking it (for a consumer of every subject of its stream; with
        ``LAST_PER_SUBJECT`` too, the newest message being the last of its subject)."""
        last = (await self.bus.js.stream_info(self.stream)).state.last_seq
        info = await self.bus.js.consumer_info(self.stream, self.durable)
        return not info.num_pending and not info.num_ack_pending and info.ack_floor.stream_seq >= last

    def consumer_config(self) -> ConsumerConfig:
        """Durable, explicit-ack; the server redelivers a little past max_deliver so we can dead-letter."""
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=self.deliver_policy,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver + 2,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
        )

    def start(self) -> asyncio.Task[None]:
        """Run the consumer loop as a task."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"consumer-{self.durable}")
        return self._task

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, then stop fetching."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                await cancel_and_wait(self._task)

    async def run(self) -> None:
        """Fetch and handle batches until stop()."""
        sub: JetStreamContext.PullSubscription | None = None
        while not self._stopping.is_set():
            raise_if_cancelled()
            try:
                if sub is None:
                    await self.bus.wait_ready(timeout=3600)
                    sub = await self.bus.js.pull_subscribe(
                        self.filter_subject or "",
                        durable=self.durable,
                        stream=self.stream,
                        config=self.consumer_config(),
                    )
                try:
                    msgs = await self._fetch(sub)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                if self.linger and 0 < len(msgs) < self.batch:
                    msgs += await self._fill(sub, self.batch - len(msgs))
                if msgs:
                    self._last_batch_at = asyncio.get_running_loop().time()
                    await self._handle(msgs)
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, nats.js.errors.Error, BusUnavailable, OSError) as exc:
                # NATS restarting: back off; re-subscribe if the subscription went bad.
                log.warning("consumer %s: bus error %r", self.durable, exc)
                if isinstance(exc, nats.errors.ConnectionClosedError | nats.js.errors.NotFoundError):
                    sub = None
                await asyncio.sleep(0.5)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        # The first message alone, then what the stream already holds behind it. A pull request may
        # outlive the fetch that sent it (the client stopped waiting as the server's expiry, counted
        # from arrival, ran a little longer; or nats-py's fallback pull after a stray status), and the
        # server serves the oldest request first: the next message then reaches the inbox through
        # that one while the waiting fetch's own request stays open, so a fetch of a batch returned
        # it only at its timeout — and, ending at its timeout, left its own request behind for the next
        # fetch. Alerts on PostgreSQL fell into that cycle for seconds at a time: each lone reading
        # waited out the rest of the 0.25 s pull (~150 ms instead of ~5). A fetch of one message ends
        # with the first message, whichever request brought it.
        # While a backlog lasts (a full batch known to be waiting behind the last message) one pull of a
        # whole batch is enough: it ends as soon as it is full.
        backlog, self._behind = self._behind >= self.batch, 0
        if backlog:
            msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout)
        else:
            msgs = await sub.fetch(1, timeout=self.fetch_timeout)
            behind = msgs[-1].metadata.num_pending or 0
            if self.batch > 1 and behind > 0:
                # Messages known to be there: the server sends them at once and ends the pull with a
                # status; the timeout matters only if a replica sharing the durable took them first.
                with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                    msgs += await sub.fetch(min(self.batch - 1, behind), timeout=FILL_FETCH_TIMEOUT_S)
        self._behind = msgs[-1].metadata.num_pending or 0
        return msgs

    async def _fill(self, sub: JetStreamContext.PullSubscription, room: int) -> list[Msg]:
        # Let the stream collect what arrives until the linger is over, then take it with one pull
        # request. (Fetching over and over until the deadline cost a pull request, and a status
        # message back, for nearly every message arriving one at a time: ~0.3 ms of CPU per message
        # here and as much again in nats-server.)
        wait = self._last_batch_at + self.linger - asyncio.get_running_loop().time()
        if wait <= 0:
            return []
        await asyncio.sleep(wait)
        try:
            return await sub.fetch(room, timeout=FILL_FETCH_TIMEOUT_S)
        except (nats.errors.TimeoutError, TimeoutError):
            return []

    async def _handle(self, msgs: list[Msg]) -> None:
        # One span per batch: the child of the first message's trace, linked to the others', so a
        # reading's trace continues from the request that brought it to the database write.
        first = msgs[0]
        attrs: dict[str, str | int] = {
            "messaging.destination.name": first.subject,
            "messaging.batch.message_count": len(msgs),
        }
        with consume_span(f"consume {self.stream}/{self.durable}", first.headers, **attrs) as span:
            for m in msgs[1:]:
                link_ctx = trace.get_current_span(extract_trace_context(m.headers)).get_span_context()
                if link_ctx.is_valid:
                    span.add_link(link_ctx)
            await self._handle_batch(msgs)

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        try:
            await self.handler(msgs)
        except Exception as exc:
            if len(msgs) == 1:
                await self._failed(msgs[0], exc)
                return
            log.warning("consumer %s: batch of %d failed (%r); retrying one by one", self.durable, len(msgs), exc)
            for msg in msgs:
                try:
                    await self.handler([msg])
                except Exception as one_exc:
                    await self._failed(msg, one_exc)
                else:
                    await msg.ack()
                    self.processed += 1
            return
        for msg in msgs:
            await msg.ack()
        self.processed += len(msgs)

    async def _failed(self, msg: Msg, exc: Exception) -> None:
        delivered = msg.metadata.num_delivered or 1
        if delivered >= self.max_deliver:
            headers = dict(msg.headers or {})
            headers.update(
                {
                    "Lifeline-Dlq-Subject": msg.subject,
                    "Lifeline-Dlq-Error": repr(exc)[:500],
                    "Lifeline-Dlq-Deliveries": str(delivered),
                    "Lifeline-Dlq-Stream-Seq": str(msg.metadata.sequence.stream),
                }
            )
            # Keep the dead letter's own id unique; dedup of the original id must not swallow it.
            headers.pop("Nats-Msg-Id", None)
            await self.bus.publish(self.dlq_subject, msg.data, headers=headers)
            await msg.term()
            self.dead_lettered += 1
            log.error(
                "consumer %s: message moved to %s after %d deliveries: %r",
                self.durable,
                self.dlq_subject,
                delivered,
                exc,
            )
            return
        delay = self.backoff[min(delivered - 1, len(self.backoff) - 1)]
        log.warning(
            "consumer %s: message failed (delivery %d of %d), retrying in %.1fs: %r",
            self.durable,
            delivered,
            self.max_deliver,
            delay,
            exc,
        )
        await msg.nak(delay=delay)
