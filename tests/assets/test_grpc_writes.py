"""AssetRegistry writes over gRPC: the same checks, scope and events as REST; errors as statuses with problems."""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2

from lifeline.assets.app import AssetsApp
from lifeline.kit.grpc import problem_from_rpc_error
from lifeline.v1 import assets_pb2 as A
from lifeline.v1 import assets_pb2_grpc
from lifeline.v1 import common_pb2 as C

from .helpers import PIPE, counts

OTHER = "3401041102000002"


@pytest.fixture
async def stub(assets: AssetsApp):
    async with assets.grpc_channel() as channel:
        yield assets_pb2_grpc.AssetRegistryStub(channel)


def line(*points: tuple[float, float]) -> A.Geometry:
    return A.Geometry(type=A.GEOMETRY_TYPE_LINE_STRING, coordinates=[A.LonLat(lon=x, lat=y) for x, y in points])


def pipe(code: str = PIPE) -> A.Facility:
    return A.Facility(
        code=code, kind=A.FACILITY_KIND_GAS, name="长江西路燃气中压管段", geometry=line((117.2, 31.82), (117.21, 31.83))
    )


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_grpc_writes(stub, writer_token: str, client: httpx.AsyncClient) -> None:
    md = (("authorization", f"Bearer {writer_token}"),)
    ch4 = A.Threshold(
        quantity="gas.ch4",
        measure="value",
        direction="above",
        levels=[
            A.ThresholdLevel(level=C.WARNING_LEVEL_III_YELLOW, value=6),
            A.ThresholdLevel(level=C.WARNING_LEVEL_I_RED, value=30),
        ],
    )
    f = (
        await stub.CreateFacility(
            A.CreateFacilityRequest(facility=A.Facility(**{**_fields(pipe()), "thresholds": [ch4]}), reason="普查"),
            metadata=md,
        )
    ).facility
    assert (f.region, f.version, f.status, f.thresholds[0].levels[1].value) == (
        "340104",
        1,
        A.FACILITY_STATUS_IN_SERVICE,
        30,
    )
    await stub.CreateFacility(A.CreateFacilityRequest(facility=pipe(OTHER)), metadata=md)
    # REST sees what gRPC wrote.
    assert (await client.get(f"/v1/facilities/{PIPE}")).json()["thresholds"][0]["levels"] == {"III": 6, "I": 30}

    f = (
        await stub.UpdateFacility(
            A.UpdateFacilityRequest(
                facility=A.Facility(code=PIPE, name="新名", status=A.FACILITY_STATUS_UNDER_REPAIR),
                update_mask=mask("name", "status"),
            ),
            metadata=md,
        )
    ).facility
    assert (f.name, f.status, f.version, f.kind) == ("新名", A.FACILITY_STATUS_UNDER_REPAIR, 2, A.FACILITY_KIND_GAS)

    window = A.SensorWindow(kind="calibration", start_ms=1_700_000_000_000, end_ms=1_700_000_060_000, note="标定")
    s = (
        await stub.CreateSensor(
            A.CreateSensorRequest(
                sensor=A.AssetSensor(
                    sensor_id="HF-GAS-P-0001",
                    facility_code=PIPE,
                    quantity="gas.pressure",
                    setpoint=200,
                    windows=[window],
                )
            ),
            metadata=md,
        )
    ).sensor
    assert (s.unit, s.setpoint, s.HasField("baseline"), list(s.windows)) == ("kPa", 200, False, [window])
    s = (
        await stub.UpdateSensor(
            A.UpdateSensorRequest(
                sensor=A.AssetSensor(sensor_id="HF-GAS-P-0001", baseline=180),
                update_mask=mask("baseline"),
                remove_windows=[window],
            ),
            metadata=md,
        )
    ).sensor
    assert (s.baseline, len(s.windows), s.version) == (180, 0, 2)

    risk = A.RiskSource(
        id="R-1",
        name="第三方施工",
        hazard="excavation",
        grade=C.WARNING_LEVEL_II_ORANGE,
        geometry=A.Geometry(type=A.GEOMETRY_TYPE_POINT, coordinates=[A.LonLat(lon=117.205, lat=31.825)]),
        facility_codes=[PIPE],
        controls=["现场监护"],
        rectification=A.Rectification(status="pending", owner="建设单位", deadline_ms=1_800_000_000_000),
    )
    r = (await stub.CreateRiskSource(A.CreateRiskSourceRequest(risk=risk), metadata=md)).risk
    assert (r.region, r.grade, r.rectification.deadline_ms) == ("340104", C.WARNING_LEVEL_II_ORANGE, 1_800_000_000_000)
    r = (
        await stub.UpdateRiskSource(
            A.UpdateRiskSourceRequest(
                risk=A.RiskSource(id="R-1", grade=C.WARNING_LEVEL_I_RED), update_mask=mask("grade")
            ),
            metadata=md,
        )
    ).risk
    assert (r.grade, r.version) == (C.WARNING_LEVEL_I_RED, 2)
    listed = await stub.ListRiskSources(A.ListRiskSourcesRequest(facility_code=PIPE), metadata=md)
    assert [x.id for x in listed.risks] == ["R-1"]

    link = (
        await stub.CreateLink(
            A.CreateLinkRequest(link=A.Link(id="L-1", from_code=PIPE, to_code=OTHER, kind=A.LINK_KIND_FLOW)),
            metadata=md,
        )
    ).link
    assert (link.region, link.kind, link.retired) == ("340104", A.LINK_KIND_FLOW, False)
    walk = await stub.TraverseNetwork(A.TraverseNetworkRequest(code=OTHER, upstream=True), metadata=md)
    assert [(x.code, x.depth, list(x.links)) for x in walk.facilities] == [(PIPE, 1, ["L-1"])]
    assert (await stub.RetireLink(A.RetireLinkRequest(id="L-1", reason="拆除"), metadata=md)).link.retired
    assert not (await stub.ListLinks(A.ListLinksRequest(facility_code=PIPE), metadata=md)).links
    assert (
        len((await stub.ListLinks(A.ListLinksRequest(facility_code=PIPE, include_retired=True), metadata=md)).links)
        == 1
    )

    unit = (
        await stub.CreateUnit(
            A.CreateUnitRequest(
                unit=A.ResponsibleUnit(id="hf-gas", name="合肥燃气集团", domains=[A.FACILITY_KIND_GAS])
            ),
            metadata=md,
        )
    ).unit
    assert (unit.region, list(unit.domains)) == ("340100", [A.FACILITY_KIND_GAS])

    history = await stub.GetHistory(A.GetHistoryRequest(entity=A.ASSET_ENTITY_RISK_SOURCE, id="R-1"), metadata=md)
    assert [(v.version, v.change) for v in history.versions] == [(1, A.CHANGE_KIND_CREATED), (2, A.CHANGE_KIND_UPDATED)]
    assert history.versions[1].before["grade"] == "II" and history.versions[1].after["grade"] == "I"
    past = (
        await stub.GetRiskSource(A.GetRiskSourceRequest(id="R-1", as_of_ms=history.versions[0].changed_ms), metadata=md)
    ).risk
    assert past.grade == C.WARNING_LEVEL_II_ORANGE


def _fields(msg: A.Facility) -> dict:
    return {f.name: v for f, v in msg.ListFields()}


async def test_grpc_write_errors_change_nothing(stub, writer_token: str, token_factory, assets: AssetsApp) -> None:
    md = (("authorization", f"Bearer {writer_token}"), ("accept-language", "en"))
    await stub.CreateFacility(A.CreateFacilityRequest(facility=pipe()), metadata=md)
    before = await counts(assets)

    async def fails(call, request, metadata=md) -> tuple[grpc.StatusCode, list[str], str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=metadata)
        problem = problem_from_rpc_error(err.value)
        assert problem is not None
        return err.value.code(), [e.field for e in problem.errors], problem.detail

    code, fields, _ = await fails(stub.CreateFacility, A.CreateFacilityRequest(facility=pipe()))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, fields, _ = await fails(
        stub.CreateFacility,
        A.CreateFacilityRequest(
            facility=A.Facility(code="3401041102000009", name="x", geometry=line((117.2, 31.8), (117.3, 31.9)))
        ),
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["kind"])  # missing
    swapped = line((31.82, 117.2), (31.83, 117.21))
    code, fields, _ = await fails(
        stub.UpdateFacility,
        A.UpdateFacilityRequest(facility=A.Facility(code=PIPE, geometry=swapped), update_mask=mask("geometry")),
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["geometry.coordinates[0]"])
    code, fields, _ = await fails(
        stub.UpdateFacility,
        A.UpdateFacilityRequest(facility=A.Facility(code=PIPE, region="340200"), update_mask=mask("region")),
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["region"])  # not a field that changes
    code, fields, detail = await fails(
        stub.CreateLink, A.CreateLinkRequest(link=A.Link(from_code=PIPE, to_code=PIPE, kind=A.LINK_KIND_FLOW))
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["to_code"]) and "itself" in detail
    code, fields, _ = await fails(
        stub.CreateRiskSource,
        A.CreateRiskSourceRequest(
            risk=A.RiskSource(
                name="x",
                hazard="flood",
                grade=C.WARNING_LEVEL_I_RED,
                geometry=line((117.2, 31.8), (117.3, 31.9)),
                rectification=A.Rectification(status="pending"),
            )
        ),
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["rectification.deadline_ms"])
    code, _, _ = await fails(stub.RetireRiskSource, A.RetireRiskSourceRequest(id="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, fields, _ = await fails(stub.GetHistory, A.GetHistoryRequest(id=PIPE))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["entity"])

    wuhu = await token_factory.client(roles=["admin"], region="340200")
    other = (("authorization", f"Bearer {wuhu}"),)
    code, _, _ = await fails(
        stub.UpdateFacility,
        A.UpdateFacilityRequest(facility=A.Facility(code=PIPE, name="x"), update_mask=mask("name")),
        other,
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = await fails(stub.RetireFacility, A.RetireFacilityRequest(code=PIPE), other)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = await fails(stub.GetHistory, A.GetHistoryRequest(entity=A.ASSET_ENTITY_FACILITY, id=PIPE), other)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    viewer = await token_factory.client(roles=["viewer"], region="340100")
    code, _, _ = await fails(
        stub.CreateFacility,
        A.CreateFacilityRequest(facility=pipe("3401041102000003")),
        (("authorization", f"Bearer {viewer}"),),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert await counts(assets) == before
