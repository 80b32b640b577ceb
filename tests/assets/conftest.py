"""An assets service of a city instance (Hefei, 340100) on real NATS, a real database and real OIDC."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats.js.errors
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.kit.auth import TokenVerifier
from lifeline.kit.bus import Bus
from lifeline.kit.config import InstanceSettings
from lifeline.kit.natsserver import NatsServer


async def reset_streams(bus: Bus) -> None:
    """Each test starts with an empty EVENTS stream and no durable consumers on it."""
    with contextlib.suppress(nats.js.errors.NotFoundError):
        for info in await bus.js.consumers_info("EVENTS"):
            await bus.js.delete_consumer("EVENTS", info.name)
        await bus.js.purge_stream("EVENTS")


@pytest.fixture
async def assets(nats_server: NatsServer, database_url: str, oidc_provider, tmp_path: Path) -> AsyncIterator[AssetsApp]:
    if not nats_server.running:
        nats_server.start()
    instance = InstanceSettings(
        region="340100", nats_url=nats_server.url, oidc_issuer=oidc_provider.issuer, data_dir=tmp_path
    )
    settings = AssetsSettings(database_url=database_url, http_port=0, grpc_port=0)
    bus = Bus(instance.nats_url, name="assets-test")
    await bus.start()
    await bus.wait_ready(10)
    await reset_streams(bus)
    verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)
    app = AssetsApp(instance=instance, settings=settings, bus=bus, verifier=verifier)
    await app.start()
    yield app
    await app.stop()
    await bus.close()
    await verifier.aclose()


@pytest.fixture
async def writer_token(token_factory) -> str:
    return await token_factory("svc")


@pytest.fixture
async def client(assets: AssetsApp, writer_token: str) -> AsyncIterator[httpx.AsyncClient]:
    assert assets.http is not None
    async with httpx.AsyncClient(
        base_url=assets.http.url, headers={"Authorization": f"Bearer {writer_token}"}, timeout=30
    ) as c:
        yield c
