"""Front door and storage as separate processes (roles): the front acknowledges, storage stores."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from lifeline.ingest.app import PERSIST_CONNECTION, IngestApp
from lifeline.ingest.settings import IngestSettings

from .helpers import count_rows, now_ms, reading, wait_stored


def test_roles_are_validated() -> None:
    assert IngestSettings(roles="storage, front").roles == "front,storage"
    with pytest.raises(ValueError, match="roles"):
        IngestSettings(roles="front,cache")


async def test_storage_role_stores_what_the_front_role_accepted(service_runner, sqlite_url, sensors_file, writer_token):
    def settings(roles: str) -> IngestSettings:
        return IngestSettings(database_url=sqlite_url, http_port=0, grpc_port=0, sensors_file=sensors_file, roles=roles)

    front = await service_runner(IngestApp, settings("front"))
    async with httpx.AsyncClient(base_url=front.http.url, headers={"Authorization": f"Bearer {writer_token}"}) as c:
        r = await c.post("/v1/readings", json={"readings": [reading(ts=now_ms() - 10)]})
        assert r.json()["accepted"] == 1
    await asyncio.sleep(0.5)
    assert await count_rows(front) == 0  # no storage role yet: safe in JetStream, not stored
    storage = await service_runner(IngestApp, settings("storage"))
    assert storage.grpc is None  # storage serves no ways in
    async with httpx.AsyncClient(base_url=storage.http.url) as c:
        assert (await c.post("/v1/readings", json={})).status_code == 404
        assert (await c.get("/readyz")).status_code == 200
    await wait_stored(front, 1)
    # The persisting consumer stores on a connection of its own, the only one with the large SQLite page
    # cache (settings.sqlite_cache_mib); the pool's connections (offline check, pings) keep the default.
    assert storage.service.persist_connection == PERSIST_CONNECTION
    async with storage.db.transaction(dedicated=PERSIST_CONNECTION) as session:
        cache = (await (await session.connection()).exec_driver_sql("PRAGMA cache_size")).scalar()
    assert cache == -storage.settings.sqlite_cache_mib * 1024
    async with storage.db.transaction() as session:
        assert (await (await session.connection()).exec_driver_sql("PRAGMA cache_size")).scalar() == -2000
    assert front.service.persist_connection is None  # the front role stores nothing
