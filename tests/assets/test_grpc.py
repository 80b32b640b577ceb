"""AssetRegistry over gRPC: the same reads as REST, scoped by region, errors as statuses."""

from __future__ import annotations

import grpc
import httpx
import pytest

from lifeline.assets.app import AssetsApp
from lifeline.v1 import assets_pb2 as A
from lifeline.v1 import assets_pb2_grpc

from .helpers import PIPE, facility, sensor


@pytest.fixture
async def stub(assets: AssetsApp):
    async with assets.grpc_channel() as channel:
        yield assets_pb2_grpc.AssetRegistryStub(channel)


async def test_grpc_reads(client: httpx.AsyncClient, stub, writer_token: str, token_factory) -> None:
    first = (await client.post("/v1/facilities", json=facility())).json()
    await client.post("/v1/facilities", json=facility("3401110501000001", kind="bridge", name="南淝河大桥"))
    await client.post("/v1/sensors", json=sensor())
    await client.patch(f"/v1/facilities/{PIPE}", json={"name": "新名"})
    md = (("authorization", f"Bearer {writer_token}"),)

    got = (await stub.GetFacility(A.GetFacilityRequest(code=PIPE), metadata=md)).facility
    assert (got.name, got.version, got.kind) == ("新名", 2, A.FACILITY_KIND_GAS)
    past = (await stub.GetFacility(A.GetFacilityRequest(code=PIPE, as_of_ms=first["updated_ms"]), metadata=md)).facility
    assert (past.name, past.version) == (first["name"], 1)

    page = await stub.ListFacilities(A.ListFacilitiesRequest(limit=1), metadata=md)
    assert [f.code for f in page.facilities] == [PIPE] and page.next_page_token
    rest = await stub.ListFacilities(A.ListFacilitiesRequest(page_token=page.next_page_token), metadata=md)
    assert [f.code for f in rest.facilities] == ["3401110501000001"] and not rest.next_page_token
    bridges = await stub.ListFacilities(A.ListFacilitiesRequest(kind=A.FACILITY_KIND_BRIDGE), metadata=md)
    assert [f.code for f in bridges.facilities] == ["3401110501000001"]

    s = (await stub.GetSensor(A.GetSensorRequest(sensor_id="HF-GAS-CH4-0001"), metadata=md)).sensor
    assert (s.facility_code, s.region, s.status) == (PIPE, "340104", A.ASSET_SENSOR_STATUS_ACTIVE)
    sensors = await stub.ListSensors(A.ListSensorsRequest(facility_code=PIPE), metadata=md)
    assert [x.sensor_id for x in sensors.sensors] == ["HF-GAS-CH4-0001"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetFacility(A.GetFacilityRequest(code="3401049999999999"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetFacility(A.GetFacilityRequest(code=PIPE))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wuhu = await token_factory.client(roles=["viewer"], region="340200")
    other = (("authorization", f"Bearer {wuhu}"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSensor(A.GetSensorRequest(sensor_id="HF-GAS-CH4-0001"), metadata=other)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not (await stub.ListFacilities(A.ListFacilitiesRequest(), metadata=other)).facilities
