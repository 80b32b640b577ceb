"""Assets keeps the census on the bus: each entity version's entry beside its change event, and the whole
census written anew (then marked complete) whenever the marker is missing, e.g. after nats-server lost
its store. SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import httpx
import nats.js.errors
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.assets.settings import AssetsSettings
from lifeline.kit.census import CENSUS_STREAM, census_complete, census_subject, ready_subject
from lifeline.v1 import assets_pb2 as A

from .helpers import facility, sensor


@pytest.fixture
async def assets(service_runner: Any, database_url: str) -> AssetsApp:
    # The keeper looks often here (60 s by default).
    settings = AssetsSettings(database_url=database_url, http_port=0, grpc_port=0, census_check_s=0.2)
    app: AssetsApp = await service_runner(AssetsApp, settings)
    return app


def fresh_ids() -> tuple[str, str]:
    serial = f"{secrets.randbelow(10**6):06d}"
    return f"3401041102{serial}", f"HF-GAS.CH4-{serial}"  # a dot in the id: one subject token all the same


async def last_entry(app: AssetsApp, subject: str, version: int, timeout: float = 10.0) -> Any:
    """The census entry on ``subject`` once it is at ``version``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            msg = await app.bus.js.get_last_msg(CENSUS_STREAM, subject)
            if msg.data and _version(subject, msg.data) == version:
                return msg
        assert asyncio.get_running_loop().time() < deadline, f"{subject} never at version {version}"
        await asyncio.sleep(0.05)


def _version(subject: str, data: bytes) -> int:
    entity = subject.split(".")[2]
    cls, field = {"facility": (A.FacilityChanged, "facility"), "sensor": (A.SensorChanged, "sensor")}[entity]
    return int(getattr(cls.FromString(data), field).version)


async def test_each_version_has_its_census_entry_beside_its_event(client: httpx.AsyncClient, assets: AssetsApp) -> None:
    code, sensor_id = fresh_ids()
    assert (await client.post("/v1/facilities", json=facility(code))).status_code == 201
    r = await client.patch(f"/v1/facilities/{code}", json={"status": "under_repair", "reason": "抢修"})
    assert r.status_code == 200, r.text
    assert (await client.post("/v1/sensors", json=sensor(sensor_id, code))).status_code == 201

    entry = await last_entry(assets, census_subject("facility", "340104", code), 2)
    changed = A.FacilityChanged.FromString(entry.data)
    assert (changed.change, changed.reason, changed.facility.status) == (
        A.CHANGE_KIND_UPDATED,
        "抢修",
        A.FACILITY_STATUS_UNDER_REPAIR,
    )
    # The entry is the change event's payload, byte for byte; one entry kept per entity.
    sub = await assets.bus.js.pull_subscribe("events.assets.facility.340104", stream="EVENTS")
    events = {A.FacilityChanged.FromString(m.data).facility.version: m.data for m in await sub.fetch(2, timeout=5)}
    assert entry.data == events[2]
    await last_entry(assets, census_subject("sensor", "340104", sensor_id), 1)
    info = await assets.bus.js.stream_info(CENSUS_STREAM, subjects_filter="$KV.census.*.340104.>")
    assert info.state.subjects == {
        census_subject("facility", "340104", code): 1,
        census_subject("sensor", "340104", sensor_id): 1,
    }
    assert sensor_id.replace(".", "=2E") in census_subject("sensor", "340104", sensor_id)


async def test_a_lost_census_is_written_whole_again_then_marked_complete(
    client: httpx.AsyncClient, assets: AssetsApp
) -> None:
    # At start the keeper found no marker: it wrote the (empty) census and the marker.
    deadline = asyncio.get_running_loop().time() + 10
    while not await census_complete(assets.bus, "340100"):
        assert asyncio.get_running_loop().time() < deadline, "no marker after start"
        await asyncio.sleep(0.05)
    code, sensor_id = fresh_ids()
    await client.post("/v1/facilities", json=facility(code))
    await client.patch(f"/v1/facilities/{code}", json={"status": "under_repair", "reason": "抢修"})
    await client.post("/v1/sensors", json=sensor(sensor_id, code))
    await client.post(f"/v1/sensors/{sensor_id}/retire")
    await last_entry(assets, census_subject("sensor", "340104", sensor_id), 2)
    rewrites = assets.census.rewrites

    # nats-server lost its store (as far as the census goes).
    await assets.bus.js.purge_stream(CENSUS_STREAM)
    assert not await census_complete(assets.bus, "340100")
    deadline = asyncio.get_running_loop().time() + 15
    while not await census_complete(assets.bus, "340100"):
        assert asyncio.get_running_loop().time() < deadline, "the census was not written again"
        await asyncio.sleep(0.05)
    assert assets.census.rewrites == rewrites + 1
    # Every entity at its current version, as first written (change kind, reason).
    fac = A.FacilityChanged.FromString((await last_entry(assets, census_subject("facility", "340104", code), 2)).data)
    assert (fac.change, fac.reason) == (A.CHANGE_KIND_UPDATED, "抢修")
    sen = A.SensorChanged.FromString((await last_entry(assets, census_subject("sensor", "340104", sensor_id), 2)).data)
    assert sen.change == A.CHANGE_KIND_RETIRED and sen.sensor.status == A.ASSET_SENSOR_STATUS_RETIRED
    marker = A.CensusComplete.FromString(
        (await assets.bus.js.get_last_msg(CENSUS_STREAM, ready_subject("340100"))).data
    )
    assert marker.region == "340100" and marker.entities["facility"] >= 1 and marker.entities["sensor"] >= 1
    # The marker came last: no entry was published after it.
    info = await assets.bus.js.stream_info(CENSUS_STREAM)
    last = await assets.bus.js.get_last_msg(CENSUS_STREAM, ready_subject("340100"))
    assert last.seq == info.state.last_seq
