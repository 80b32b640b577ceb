"""How a service runs: its database, HTTP and gRPC servers, background tasks and graceful shutdown.

A service subclasses ``Service`` and fills in what it serves; the launcher starts any number of them in
one process (single-process mode) or one per process (microservices mode), sharing the process's bus
connection and token verifier.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fastapi import FastAPI
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from lifeline.kit.auth import TokenVerifier
from lifeline.kit.bus import Bus, PullConsumer
from lifeline.kit.config import InstanceSettings, ServiceSettings
from lifeline.kit.db import Database
from lifeline.kit.http import HttpServer, serve_http
from lifeline.kit.migrations import migrate
from lifeline.kit.outbox import OutboxRelay
from lifeline.kit.tasks import cancel_and_wait

if TYPE_CHECKING:
    # gRPC is imported by a service that serves it (start) or dials it: ~9.5 MB of RSS that a process
    # without either (ingest's storage process on a sensors file) need not carry.
    import grpc

    from lifeline.kit.grpc import AddServicerFn, GrpcServer

log = logging.getLogger(__name__)

# Latest sampled values, keyed by (metric, service, consumer); read by the observable gauges below,
# whose callbacks must not do I/O (a scrape would otherwise wait on the database and NATS).
_samples: dict[tuple[str, str, str], float] = {}


def _gauge_callback(metric: str) -> Callable[[CallbackOptions], list[Observation]]:
    def observe(_options: CallbackOptions) -> list[Observation]:
        out = []
        for (name, service, consumer), value in list(_samples.items()):
            if name == metric:
                attrs = {"service": service, **({"consumer": consumer} if consumer else {})}
                out.append(Observation(value, attrs))
        return out

    return observe


_meter = metrics.get_meter("lifeline.kit.runtime")
_meter.create_observable_gauge(
    "lifeline_outbox_depth", callbacks=[_gauge_callback("outbox_depth")], description="Outbox events not yet published"
)
_meter.create_observable_gauge(
    "lifeline_consumer_pending",
    callbacks=[_gauge_callback("consumer_pending")],
    description="Messages a durable consumer has not processed yet (consumer lag)",
)


class Background(Protocol):
    """A long-running part of a service (consumer, relay, timer) with a start and a graceful stop."""

    def start(self) -> Any: ...

    async def stop(self) -> None: ...


def freeze_heap(after: str) -> None:
    """Exempt everything alive now (modules, the app, start-up state) from garbage collection.

    A full collection walks every tracked object: with a city's census and engine state that is
    ~0.2 s on a slow core in which nothing else runs, and the hot paths' allocations trigger one every
    few seconds under load (alerts' p99 latency; ~15 % of ingest's front door CPU). Frozen objects are
    still freed by reference counting; only cycles among them are never collected, and start-up state
    lives as long as the process. ``Service.stop`` thaws the heap again."""
    gc.collect()
    gc.freeze()
    log.info("heap frozen after %s: %d objects exempt from collection", after, gc.get_freeze_count())


class TaskPart(abc.ABC):
    """A background part that is one task running ``_run()``: ``start()`` creates it once, named
    ``task_name``; ``stop()`` cancels it and waits for its end (a part that ends gracefully overrides it)."""

    task_name = "background"
    _task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start ``_run()`` as a task (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.task_name)
        return self._task

    @abc.abstractmethod
    async def _run(self) -> None:
        """The part's work, until it ends or is cancelled."""

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        await self._cancel_task()

    async def _cancel_task(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)


class Periodic(TaskPart):
    """Calls `fn` every `interval` seconds until stopped; errors are logged and the loop goes on."""

    def __init__(self, name: str, interval: float, fn: Callable[[], Awaitable[Any]]) -> None:
        self.name = self.task_name = name
        self.interval = interval
        self.fn = fn
        self._stop = asyncio.Event()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            if self._stop.is_set():
                return
            try:
                await self.fn()
            except Exception:
                log.exception("periodic task %s failed", self.name)

    async def stop(self) -> None:
        """Stop after the current run."""
        self._stop.set()
        if self._task is not None:
            await self._task


class RelayTask:
    """Runs an OutboxRelay as a background part."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start relaying."""
        if self._task is None:
            self._task = asyncio.create_task(self.relay.run(), name="outbox-relay")
        return self._task

    async def stop(self) -> None:
        """Finish the batch in flight and stop."""
        await self.relay.stop()
        if self._task is not None:
            await self._task


class Service(abc.ABC):
    """Base of every Lifeline service; subclasses implement the hooks below."""

    name: ClassVar[str] = "service"
    settings_cls: ClassVar[type[ServiceSettings]] = ServiceSettings
    migrations: ClassVar[Path | None] = None
    grpc_service_names: ClassVar[Sequence[str]] = ()
    metrics_interval_s: ClassVar[float] = 5.0

    def __init__(
        self, *, instance: InstanceSettings, settings: ServiceSettings, bus: Bus, verifier: TokenVerifier
    ) -> None:
        self.instance = instance
        self.settings = settings
        self.bus = bus
        self.verifier = verifier
        self.database_url = settings.database_url_for(instance)
        self.db = Database.from_url(self.database_url)
        self.relay = OutboxRelay(self.db, self._publish_event)
        self.background: list[Background] = [RelayTask(self.relay)]
        self._started: list[Background] = []
        self.http: HttpServer | None = None
        self.grpc: GrpcServer | None = None
        self.app: FastAPI | None = None

    async def _publish_event(self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]) -> None:
        await self.bus.publish(subject, payload, msg_id=msg_id, headers=headers)

    # --- hooks -------------------------------------------------------------------------------------

    async def setup(self) -> None:  # noqa: B027 - optional hook: a service may have nothing to set up
        """Build the service's objects once the database is migrated (before anything is served)."""

    @abc.abstractmethod
    def create_app(self) -> FastAPI:
        """The service's FastAPI application."""

    def grpc_servicers(self) -> Sequence[tuple[AddServicerFn, Any]]:
        """(add_XServicer_to_server, servicer) pairs."""
        return ()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate, set up, then serve HTTP and gRPC and start the background parts.

        If any step fails, what had started stops again before the error propagates: consumers and
        timers started before a server that cannot bind its port would otherwise live on in a process
        whose instance is giving up (and keep its bus from closing)."""
        try:
            await self._start()
        except BaseException:
            try:
                await self.stop()
            except Exception:
                log.exception("stopping %s after its failed start failed too", self.name)
            raise

    async def _start(self) -> None:
        if self.migrations is not None:
            await migrate(self.database_url, self.migrations)
        await self.setup()
        self.background.append(Periodic(f"{self.name}-metrics", self.metrics_interval_s, self.sample_metrics))
        self.app = self.create_app()
        self.app.state.db = self.db
        self.app.state.token_verifier = self.verifier
        self.app.state.readiness.update({"database": self.db.ping, "bus": self._bus_ready})
        for part in self.background:
            part.start()
            self._started.append(part)
        self.http = await serve_http(
            self.app, self.settings.http_host, self.settings.http_port, reuse_port=self.settings.reuse_port
        )
        servicers = self.grpc_servicers()
        if servicers:
            from lifeline.kit.grpc import AuthInterceptor, start_grpc_server

            self.grpc = await start_grpc_server(
                host=self.settings.http_host,
                port=self.settings.grpc_port,
                servicers=servicers,
                service_names=self.grpc_service_names,
                interceptors=[AuthInterceptor(self.verifier)],
                reuse_port=self.settings.reuse_port,
            )
        log.info(
            "service %s started",
            self.name,
            extra={"http": self.http.url, "grpc": self.grpc.address if self.grpc else None},
        )

    async def sample_metrics(self) -> None:
        """Sample outbox depth and consumer lag for the gauges."""
        _samples[("outbox_depth", self.name, "")] = await self.relay.depth()
        for part in self.background:
            if isinstance(part, PullConsumer):
                try:
                    _samples[("consumer_pending", self.name, part.durable)] = await part.pending()
                except Exception as exc:  # a metric sample never fails the service
                    log.debug("consumer lag of %s unavailable: %r", part.durable, exc)

    async def _bus_ready(self) -> bool:
        return self.bus.connected

    async def stop(self) -> None:
        """Stop taking calls, let those in flight finish, stop background parts, close the database."""
        if self.grpc is not None:
            await self.grpc.stop(5.0)
        if self.http is not None:
            await self.http.stop()
        for part in reversed(self._started):
            try:
                await part.stop()
            except Exception:
                log.exception("stopping %r failed", part)
        self._started.clear()
        await self.db.dispose()
        # Collectable again: a process that starts services again (the tests) must not keep them forever.
        gc.unfreeze()
        log.info("service %s stopped", self.name)

    @property
    def grpc_channel_target(self) -> str:
        """Where clients dial this service's gRPC server."""
        if self.grpc is None:
            raise RuntimeError("gRPC server not started")
        return self.grpc.address

    def grpc_channel(self) -> grpc.aio.Channel:
        """An insecure channel to this service (tests, the demo)."""
        import grpc.aio

        return grpc.aio.insecure_channel(self.grpc_channel_target)
