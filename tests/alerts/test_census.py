"""Alerts' copy of the census: batches stored in one go (newest version wins, also against another writer
of the same database), and retired sensors and facilities clearing their alerts.

SQLite and PostgreSQL (the ``database_url`` fixture); the service without servers, except where events
are read back from NATS.
"""

from __future__ import annotations

from typing import Any

from lifeline.alerts import repository
from lifeline.alerts.service import AlertsService
from lifeline.v1 import assets_pb2

from .helpers import REGION, fresh_ids


def facility_event(
    code: str, unit_id: str, version: int, change: int = assets_pb2.CHANGE_KIND_UPDATED
) -> tuple[str, bytes]:
    fac = assets_pb2.Facility(
        code=code, kind=assets_pb2.FACILITY_KIND_GAS, region=REGION, unit_id=unit_id, version=version
    )
    return "facility", assets_pb2.FacilityChanged(change=change, facility=fac).SerializeToString()


async def stored_doc(service: AlertsService, entity: str, key: str) -> dict[str, Any] | None:
    async with service.db.transaction(readonly=True) as session:
        return await repository.get_ctx(session=session, entity=entity, key=key)


async def test_a_batch_keeps_the_newest_version_of_each_entity(service: AlertsService) -> None:
    code, _ = fresh_ids()
    other, _ = fresh_ids()
    batch = [facility_event(code, "unit-v2", 2), facility_event(code, "unit-v3", 3), facility_event(code, "unit-v1", 1)]
    batch.append(facility_event(other, "unit-a", 1))
    assert await service.apply_assets(batch) == 2
    assert service.engine.facilities[code].unit_id == "unit-v3"
    doc = await stored_doc(service, "facility", code)
    assert doc is not None and doc["unit_id"] == "unit-v3" and doc["version"] == "3"
    # The same batch again (a redelivery) changes nothing.
    assert await service.apply_assets(batch) == 0


async def test_an_older_version_never_overwrites_what_another_writer_stored(service: AlertsService) -> None:
    """Two writers of one database (e.g. replicas): the version check is in the statement, not only in memory."""
    other = AlertsService(
        region="340100", catalogue=service.catalogue, policy=service.policy, db=service.db, clock=service.clock
    )
    await other.load()  # before the first writer stored anything: its copy knows no version of the facility
    code, _ = fresh_ids()
    assert await service.apply_assets([facility_event(code, "unit-v3", 3)]) == 1
    assert await other.apply_assets([facility_event(code, "unit-v2", 2)]) == 0
    assert code not in other.engine.facilities
    doc = await stored_doc(service, "facility", code)
    assert doc is not None and doc["unit_id"] == "unit-v3"
    assert await other.apply_assets([facility_event(code, "unit-v4", 4)]) == 1
    doc = await stored_doc(service, "facility", code)
    assert doc is not None and doc["unit_id"] == "unit-v4"
