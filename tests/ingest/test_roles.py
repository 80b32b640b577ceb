"""Front door and storage as separate processes (roles): the front acknowledges, storage stores."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from lifeline.ingest.app import IngestApp
from lifeline.ingest.settings import IngestSettings
from lifeline.kit.auth import TokenVerifier
from lifeline.kit.bus import Bus
from lifeline.kit.config import InstanceSettings

from .conftest import reset_streams
from .helpers import count_rows, now_ms, reading, wait_stored


def test_roles_are_validated() -> None:
    assert IngestSettings(roles="storage, front").roles == "front,storage"
    with pytest.raises(ValueError, match="roles"):
        IngestSettings(roles="front,cache")


async def test_storage_role_stores_what_the_front_role_accepted(
    nats_server, sqlite_url, oidc_provider, sensors_file, tmp_path, writer_token
):
    instance = InstanceSettings(
        region="340100", nats_url=nats_server.url, oidc_issuer=oidc_provider.issuer, data_dir=tmp_path
    )
    bus = Bus(instance.nats_url, name="roles-test")
    await bus.start()
    await bus.wait_ready(10)
    await reset_streams(bus)
    verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)

    def app(roles: str) -> IngestApp:
        settings = IngestSettings(
            database_url=sqlite_url, http_port=0, grpc_port=0, sensors_file=sensors_file, roles=roles
        )
        return IngestApp(instance=instance, settings=settings, bus=bus, verifier=verifier)

    front, storage = app("front"), app("storage")
    await front.start()
    try:
        async with httpx.AsyncClient(
            base_url=front.http.url, headers={"Authorization": f"Bearer {writer_token}"}
        ) as c:
            r = await c.post("/v1/readings", json={"readings": [reading(ts=now_ms() - 10)]})
            assert r.json()["accepted"] == 1
        await asyncio.sleep(0.5)
        assert await count_rows(front) == 0  # no storage role yet: safe in JetStream, not stored
        await storage.start()
        assert storage.grpc is None  # storage serves no ways in
        async with httpx.AsyncClient(base_url=storage.http.url) as c:
            assert (await c.post("/v1/readings", json={})).status_code == 404
            assert (await c.get("/readyz")).status_code == 200
        await wait_stored(front, 1)
    finally:
        await storage.stop()
        await front.stop()
        await bus.close()
        await verifier.aclose()
