"""Fixtures: run a Lifeline service of a city instance in the test's event loop, on real infrastructure.

``service_runner`` starts any ``lifeline.kit.runtime.Service`` subclass against the session's nats-server,
the dev OpenID provider and the given database, with empty streams (no test sees another's messages),
and stops it (and its bus and verifier) at the end of the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import nats.js.errors
import pytest

from lifeline.kit.auth import TokenVerifier
from lifeline.kit.bus import STREAMS, Bus
from lifeline.kit.config import InstanceSettings, ServiceSettings
from lifeline.kit.natsserver import NatsServer
from lifeline.kit.runtime import Service
from lifeline.kit.testing.db import before_database_drop

__all__ = ["reset_streams", "service_runner"]

S = TypeVar("S", bound=Service)
ServiceRunner = Callable[..., Awaitable[Any]]


async def reset_streams(bus: Bus) -> None:
    """Empty every stream and delete its durable consumers."""
    for spec in STREAMS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            for info in await bus.js.consumers_info(spec.name):
                await bus.js.delete_consumer(spec.name, info.name)
            await bus.js.purge_stream(spec.name)


@pytest.fixture
async def service_runner(
    nats_server: NatsServer, oidc_provider: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServiceRunner]:
    """``await service_runner(IngestApp, settings, region="340100")`` → a started service."""
    started: list[tuple[Service, Bus, TokenVerifier]] = []

    async def stop_all() -> None:
        while started:
            app, bus, verifier = started.pop()
            await app.stop()
            await bus.close()
            await verifier.aclose()

    # A service's database may be a fixture set up after this one, hence torn down before it.
    before_database_drop(request.node, stop_all)

    async def run(cls: type[S], settings: ServiceSettings, *, region: str = "340100", reset: bool = True) -> S:
        if not nats_server.running:
            nats_server.start()
        instance = InstanceSettings(
            region=region, nats_url=nats_server.url, oidc_issuer=oidc_provider.issuer, data_dir=tmp_path
        )
        bus = Bus(instance.nats_url, name=f"{cls.name}-test")
        await bus.start()
        await bus.wait_ready(10)
        if reset and not started:
            await reset_streams(bus)
        verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)
        app = cls(instance=instance, settings=settings, bus=bus, verifier=verifier)
        started.append((app, bus, verifier))
        await app.start()
        return app

    yield run
    await stop_all()
