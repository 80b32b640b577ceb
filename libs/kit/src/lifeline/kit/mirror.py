"""A local copy of another service's entities, kept current: a snapshot plus its change events.

A service that needs another's census in memory in every replica (ingest the sensors of assets) builds a
:class:`Mirror`: it follows the owner's change events on the bus with an
*ordered consumer* of its own (an ephemeral JetStream consumer per process, so every replica sees every
event, unlike a shared durable), then reads a snapshot (paged reads from the owner, e.g. gRPC) and keeps
re-reading it with backoff until it succeeds. Following starts before the snapshot is read, so no change
falls between the two; every item carries a version and only a newer version than the one held is
applied, so duplicated, late or out-of-order events and a snapshot older than an event cannot roll an
entity back. ``ready`` turns true once the first snapshot is in.

:class:`SnapshotLoop` is the loop under it, for any copy that reads a snapshot periodically (alerts'
census follows the events with a durable consumer instead, so it uses the loop alone): read at start,
again every ``resync_s`` seconds or on ``resync()``, and after a failure with backoff; ``ready`` once one
was read completely. :class:`PeerChannel` is a gRPC channel to another service of the instance with the
instance's service credentials, and :func:`grpc_pages` walks a paged list call (``page_token`` /
``next_page_token``) through it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from lifeline.kit.auth import ClientCredentials
from lifeline.kit.bus import Bus
from lifeline.kit.config import InstanceSettings

if TYPE_CHECKING:
    import grpc.aio

__all__ = ["Mirror", "PeerChannel", "SnapshotLoop", "grpc_pages"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class SnapshotLoop(abc.ABC):
    """Reads a snapshot (``read_snapshot``) at start, every ``resync_s`` seconds and on ``resync()``;
    after a failure it waits (``retry_s``: the first and the longest delay, doubling) and reads again.

    ``following()`` wraps each read and the wait for the next one (a mirror's subscription, so that it is
    made anew after a failure). ``ready`` turns true once a snapshot was read completely and stays true:
    the copy keeps serving what it has while its owner cannot be reached."""

    def __init__(self, name: str, *, retry_s: tuple[float, float] = (0.5, 15.0), resync_s: float = 600.0) -> None:
        self.name = name
        self.retry_s = retry_s
        self.resync_s = resync_s
        self.snapshots = 0
        self.last_error: str | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._resync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def read_snapshot(self) -> int:
        """Read one whole snapshot into the copy; returns how many items were newer than held."""

    def following(self) -> AbstractAsyncContextManager[Any]:
        """What runs around a snapshot and the wait for the next one; nothing by default."""
        return contextlib.nullcontext()

    @property
    def ready(self) -> bool:
        """True once a first snapshot has been read completely."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first snapshot; True if it is in."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    def start(self) -> asyncio.Task[None]:
        """Run the loop in a task until stop()."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"snapshot-{self.name}")
        return self._task

    async def stop(self) -> None:
        """Stop the loop (a read in progress is abandoned)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def resync(self) -> None:
        """Read a new snapshot now (e.g. after the owner restored a backup)."""
        self._resync.set()

    async def read(self) -> int:
        """Read one snapshot now and account for it; returns how many items were newer than held."""
        applied = await self.read_snapshot()
        if self._stopping.is_set():
            return applied  # abandoned half-way: not a complete snapshot
        self.snapshots += 1
        self.last_error = None
        first = not self.ready
        self._ready.set()
        log.info("%s: snapshot read (%d newer items applied)", self.name, applied, extra={"first": first})
        return applied

    async def run(self) -> None:
        """Read, wait for the next resync, read again; after a failure retry with backoff."""
        delay = self.retry_s[0]
        while not self._stopping.is_set():
            try:
                async with self.following():
                    await self.read()
                    delay = self.retry_s[0]
                    self._resync.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._resync.wait(), self.resync_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = repr(exc)
                log.warning("%s: snapshot failed: %r; retrying in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_s[1])


class Mirror(SnapshotLoop, Generic[T]):
    """Follows ``subject`` on the bus and a snapshot source; hands every newer item version to ``apply``.

    ``decode`` turns an event payload into an item (None: not for this mirror, e.g. another region);
    ``snapshot`` yields every current item; ``key`` and ``version`` identify an item's entity and its
    version. ``apply`` must not await (it runs between two events, with nothing else interleaved).
    A snapshot is read at start, after any failure (subscribing anew first), and every ``resync_s``
    seconds as a safety net; between them the ordered consumer resumes by itself after NATS hiccups.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        name: str,
        subject: str,
        decode: Callable[[bytes], T | None],
        snapshot: Callable[[], AsyncIterator[T]],
        key: Callable[[T], str],
        version: Callable[[T], int],
        apply: Callable[[T], None],
        stream: str = "EVENTS",
        retry_s: tuple[float, float] = (0.5, 15.0),
        resync_s: float = 600.0,
    ) -> None:
        super().__init__(f"mirror {name}", retry_s=retry_s, resync_s=resync_s)
        self.bus = bus
        self.subject = subject
        self.stream = stream
        self._decode = decode
        self._snapshot = snapshot
        self._key = key
        self._version = version
        self._apply = apply
        self.versions: dict[str, int] = {}
        self.applied = 0
        self.stale = 0

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

    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[None]:
        """Subscribed before the snapshot is read, so no change falls between the two; anew after a failure."""
        await self.bus.wait_ready(timeout=3600)
        # Ordered consumer: ephemeral, flow-controlled, re-created by nats-py from the last stream
        # sequence seen when it stalls, so events are neither skipped nor shared with other replicas.
        sub = await self.bus.js.subscribe(
            self.subject,
            stream=self.stream,
            cb=self._on_event,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            idle_heartbeat=2.0,
        )
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        try:
            item = self._decode(msg.data)
        except Exception as exc:
            log.error("%s: undecodable event on %s: %r", self.name, msg.subject, exc)
            return
        if item is not None:
            self.offer(item)

    async def read_snapshot(self) -> int:
        applied = 0
        async for item in self._snapshot():
            applied += self.offer(item)
            if self._stopping.is_set():
                break
        return applied


class PeerChannel:
    """A gRPC channel to another service of this instance, and the instance's service account
    (client-credentials grant) to authorize calls on it, e.g. through :func:`grpc_pages`."""

    def __init__(self, address: str, instance: InstanceSettings) -> None:
        # gRPC imported here, by a process that dials a peer (see lifeline.kit.runtime).
        import grpc.aio

        self.channel: grpc.aio.Channel = grpc.aio.insecure_channel(address)
        self.credentials = ClientCredentials(instance.oidc_issuer, instance.oidc_client_id, instance.oidc_client_secret)

    async def close(self) -> None:
        """Close the channel and the token client."""
        await self.channel.close(None)
        await self.credentials.aclose()


async def grpc_pages(
    call: Callable[..., Awaitable[Any]],
    request: Any,
    *,
    items: str,
    credentials: ClientCredentials,
    timeout: float = 10.0,
) -> AsyncIterator[Any]:
    """Yield every item of a paged list call, following ``next_page_token`` to the end."""
    import grpc.aio

    token = ""
    while True:
        request.page_token = token
        metadata = (("authorization", await credentials.authorization()),)
        try:
            response = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                credentials.invalidate()  # e.g. the issuer rotated its keys: the next try gets a new token
            raise
        for item in getattr(response, items):
            yield item
        token = response.next_page_token
        if not token:
            return
