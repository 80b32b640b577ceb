"""gRPC edge of assets: AssetRegistry, the same reads and writes as REST with the same checks and scope.

A write's message is turned into the REST edge's JSON and validated by the same pydantic shape, so a
field is checked once whichever edge it came through; the service's problems become gRPC statuses with
the problem details attached (lifeline.kit.grpc).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from pydantic import BaseModel, ValidationError

from lifeline.kit import i18n
from lifeline.kit.auth import current_principal
from lifeline.kit.problems import FieldError, ProblemError, validation_field_errors
from lifeline.v1 import assets_pb2 as A
from lifeline.v1 import assets_pb2_grpc

from .messages import (
    CHANGE,
    FACILITY_STATUS_NAME,
    KIND_NAME,
    LEVEL_NAME,
    LINK_KIND_NAME,
    PROTO,
    SENSOR_STATUS_NAME,
    window_doc,
)
from .schemas import (
    FacilityCreate,
    FacilityUpdate,
    LinkCreate,
    LinkUpdate,
    RiskCreate,
    RiskUpdate,
    SensorCreate,
    SensorUpdate,
    UnitCreate,
    UnitUpdate,
)
from .service import AssetsService
from .spatial.grpc import SpatialRpcs

i18n.register(
    {
        "assets.history_entity": {
            "zh-CN": "请指明实体类型（设施、传感器、责任单位、风险源或管网连接）",
            "en": "name the entity (facility, sensor, unit, risk source or link)",
        }
    }
)

# Entity → (create shape, update shape, field of its key in the message).
_SHAPES: dict[str, tuple[type[BaseModel], type[BaseModel], str]] = {
    "facility": (FacilityCreate, FacilityUpdate, "code"),
    "sensor": (SensorCreate, SensorUpdate, "sensor_id"),
    "unit": (UnitCreate, UnitUpdate, "id"),
    "risk": (RiskCreate, RiskUpdate, "id"),
    "link": (LinkCreate, LinkUpdate, "id"),
}
_ENTITY = {
    A.ASSET_ENTITY_FACILITY: "facility",
    A.ASSET_ENTITY_SENSOR: "sensor",
    A.ASSET_ENTITY_UNIT: "unit",
    A.ASSET_ENTITY_RISK_SOURCE: "risk",
    A.ASSET_ENTITY_LINK: "link",
}


def _validated(shape: type[BaseModel], data: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """`data` checked by the REST edge's shape, as the JSON the service takes; 422 naming the fields."""
    try:
        model = shape.model_validate(data)
    except ValidationError as exc:
        errors = validation_field_errors(exc.errors())
        raise ProblemError(
            422, detail="problem.validation_failed.detail", errors=errors, params={"count": len(errors)}
        ) from exc
    return model.model_dump(mode="json", exclude_unset=partial)


class AssetRegistryServicer(SpatialRpcs, assets_pb2_grpc.AssetRegistryServicer):
    def __init__(self, service: AssetsService) -> None:
        self.service = service

    # --- generic steps -----------------------------------------------------------------------------------

    async def _create(self, entity: str, msg: Any, reason: str, context: Any) -> Any:
        shape, _, _ = _SHAPES[entity]
        _, _, _, to_proto, to_doc = PROTO[entity]
        # Unset fields (None, empty lists) take the shape's defaults, as when absent from REST JSON.
        data = {k: v for k, v in to_doc(msg).items() if v not in (None, [], {}) and k in shape.model_fields}
        data = _validated(shape, {**data, "reason": reason or None}, partial=False)
        doc = await self.service.create(entity=entity, data=data, principal=current_principal(), source=context.peer())
        return to_proto(doc)

    async def _update(self, entity: str, request: Any, context: Any, **ops: Any) -> Any:
        _, shape, key_field = _SHAPES[entity]
        _, _, field, to_proto, to_doc = PROTO[entity]
        msg = getattr(request, field)
        full = to_doc(msg)
        # A path the shape does not know is left in so that the shape refuses it by name.
        changes = {path: full.get(path) for path in request.update_mask.paths}
        changes.update({k: v for k, v in ops.items() if v})
        changes = _validated(shape, {**changes, "reason": request.reason or None}, partial=True)
        doc = await self.service.update(
            entity=entity,
            key=getattr(msg, key_field),
            changes=changes,
            principal=current_principal(),
            source=context.peer(),
        )
        return to_proto(doc)

    async def _retire(self, entity: str, key: str, reason: str, context: Any) -> Any:
        doc = await self.service.retire(
            entity=entity, key=key, reason=reason or None, principal=current_principal(), source=context.peer()
        )
        return PROTO[entity][3](doc)

    async def _get(self, entity: str, key: str, as_of_ms: int, context: Any) -> Any:
        doc = await self.service.get(
            entity=entity, key=key, principal=current_principal(), as_of_ms=as_of_ms or None, source=context.peer()
        )
        return PROTO[entity][3](doc)

    async def _page(
        self,
        entity: str,
        request: Any,
        context: Any,
        equals: dict[str | tuple[str, ...], Any],
        contains: dict[str, str | None] | None = None,
    ) -> tuple[list[Any], str]:
        if hasattr(request, "include_retired") and not request.include_retired:
            equals = {**equals, "status": "active"}
        docs, token = await self.service.page(
            entity=entity,
            principal=current_principal(),
            equals=equals,
            contains=contains,
            region_prefix=request.region_prefix or None,
            text=request.query or None,
            limit=request.limit or 100,
            page_token=request.page_token or None,
            source=context.peer(),
        )
        return [PROTO[entity][3](d) for d in docs], token or ""

    # --- facilities ------------------------------------------------------------------------------------

    async def GetFacility(self, request: Any, context: Any) -> A.GetFacilityResponse:
        return A.GetFacilityResponse(facility=await self._get("facility", request.code, request.as_of_ms, context))

    async def ListFacilities(self, request: Any, context: Any) -> A.ListFacilitiesResponse:
        equals = {"kind": KIND_NAME.get(request.kind), "status": FACILITY_STATUS_NAME.get(request.status)}
        items, token = await self._page("facility", request, context, equals)
        return A.ListFacilitiesResponse(facilities=items, next_page_token=token)

    async def CreateFacility(self, request: Any, context: Any) -> A.CreateFacilityResponse:
        return A.CreateFacilityResponse(
            facility=await self._create("facility", request.facility, request.reason, context)
        )

    async def UpdateFacility(self, request: Any, context: Any) -> A.UpdateFacilityResponse:
        return A.UpdateFacilityResponse(facility=await self._update("facility", request, context))

    async def RetireFacility(self, request: Any, context: Any) -> A.RetireFacilityResponse:
        return A.RetireFacilityResponse(facility=await self._retire("facility", request.code, request.reason, context))

    # --- sensors ---------------------------------------------------------------------------------------

    async def GetSensor(self, request: Any, context: Any) -> A.GetSensorResponse:
        return A.GetSensorResponse(sensor=await self._get("sensor", request.sensor_id, request.as_of_ms, context))

    async def ListSensors(self, request: Any, context: Any) -> A.ListSensorsResponse:
        equals = {"facility_code": request.facility_code or None, "status": SENSOR_STATUS_NAME.get(request.status)}
        items, token = await self._page("sensor", request, context, equals)
        return A.ListSensorsResponse(sensors=items, next_page_token=token)

    async def CreateSensor(self, request: Any, context: Any) -> A.CreateSensorResponse:
        return A.CreateSensorResponse(sensor=await self._create("sensor", request.sensor, request.reason, context))

    async def UpdateSensor(self, request: Any, context: Any) -> A.UpdateSensorResponse:
        sensor = await self._update(
            "sensor",
            request,
            context,
            add_windows=[window_doc(w) for w in request.add_windows],
            remove_windows=[window_doc(w) for w in request.remove_windows],
        )
        return A.UpdateSensorResponse(sensor=sensor)

    async def RetireSensor(self, request: Any, context: Any) -> A.RetireSensorResponse:
        return A.RetireSensorResponse(sensor=await self._retire("sensor", request.sensor_id, request.reason, context))

    # --- responsible units -----------------------------------------------------------------------------

    async def GetUnit(self, request: Any, context: Any) -> A.GetUnitResponse:
        return A.GetUnitResponse(unit=await self._get("unit", request.id, request.as_of_ms, context))

    async def ListUnits(self, request: Any, context: Any) -> A.ListUnitsResponse:
        items, token = await self._page("unit", request, context, {})
        return A.ListUnitsResponse(units=items, next_page_token=token)

    async def CreateUnit(self, request: Any, context: Any) -> A.CreateUnitResponse:
        return A.CreateUnitResponse(unit=await self._create("unit", request.unit, request.reason, context))

    async def UpdateUnit(self, request: Any, context: Any) -> A.UpdateUnitResponse:
        return A.UpdateUnitResponse(unit=await self._update("unit", request, context))

    async def RetireUnit(self, request: Any, context: Any) -> A.RetireUnitResponse:
        return A.RetireUnitResponse(unit=await self._retire("unit", request.id, request.reason, context))

    # --- risk sources ----------------------------------------------------------------------------------

    async def GetRiskSource(self, request: Any, context: Any) -> A.GetRiskSourceResponse:
        return A.GetRiskSourceResponse(risk=await self._get("risk", request.id, request.as_of_ms, context))

    async def ListRiskSources(self, request: Any, context: Any) -> A.ListRiskSourcesResponse:
        equals = {"hazard": request.hazard or None, "grade": LEVEL_NAME.get(request.grade)}
        contains = {"facility_codes": request.facility_code or None}
        items, token = await self._page("risk", request, context, equals, contains)
        return A.ListRiskSourcesResponse(risks=items, next_page_token=token)

    async def CreateRiskSource(self, request: Any, context: Any) -> A.CreateRiskSourceResponse:
        return A.CreateRiskSourceResponse(risk=await self._create("risk", request.risk, request.reason, context))

    async def UpdateRiskSource(self, request: Any, context: Any) -> A.UpdateRiskSourceResponse:
        return A.UpdateRiskSourceResponse(risk=await self._update("risk", request, context))

    async def RetireRiskSource(self, request: Any, context: Any) -> A.RetireRiskSourceResponse:
        return A.RetireRiskSourceResponse(risk=await self._retire("risk", request.id, request.reason, context))

    # --- topology links --------------------------------------------------------------------------------

    async def GetLink(self, request: Any, context: Any) -> A.GetLinkResponse:
        return A.GetLinkResponse(link=await self._get("link", request.id, request.as_of_ms, context))

    async def ListLinks(self, request: Any, context: Any) -> A.ListLinksResponse:
        equals = {
            "from_code": request.from_code or None,
            "to_code": request.to_code or None,
            ("from_code", "to_code"): request.facility_code or None,
            "kind": LINK_KIND_NAME.get(request.kind),
        }
        items, token = await self._page("link", request, context, equals)
        return A.ListLinksResponse(links=items, next_page_token=token)

    async def CreateLink(self, request: Any, context: Any) -> A.CreateLinkResponse:
        return A.CreateLinkResponse(link=await self._create("link", request.link, request.reason, context))

    async def UpdateLink(self, request: Any, context: Any) -> A.UpdateLinkResponse:
        return A.UpdateLinkResponse(link=await self._update("link", request, context))

    async def RetireLink(self, request: Any, context: Any) -> A.RetireLinkResponse:
        return A.RetireLinkResponse(link=await self._retire("link", request.id, request.reason, context))

    async def TraverseNetwork(self, request: Any, context: Any) -> A.TraverseNetworkResponse:
        walk = await self.service.traverse(
            code=request.code,
            downstream=not request.upstream,
            principal=current_principal(),
            max_depth=request.max_depth or 10,
            kinds=[LINK_KIND_NAME[k] for k in request.kinds if k in LINK_KIND_NAME],
            source=context.peer(),
        )
        return A.TraverseNetworkResponse(
            facilities=[A.ReachedFacility(**f) for f in walk["facilities"]], truncated=walk["truncated"]
        )

    # --- any entity ------------------------------------------------------------------------------------

    async def GetHistory(self, request: Any, context: Any) -> A.GetHistoryResponse:
        entity = _ENTITY.get(request.entity)
        if entity is None:
            key = "assets.history_entity"
            raise ProblemError(422, detail=key, errors=[FieldError("entity", "invalid", key)])
        versions = await self.service.history(
            entity=entity, key=request.id, principal=current_principal(), source=context.peer()
        )
        out = []
        for v in versions:
            msg = A.AssetVersion(
                version=v["version"],
                change=CHANGE[v["change"]],
                changed_ms=v["changed_ms"],
                actor=v["actor"],
                reason=v["reason"] or "",
            )
            json_format.ParseDict(v["after"], msg.after)
            if v["before"] is not None:
                json_format.ParseDict(v["before"], msg.before)
            out.append(msg)
        return A.GetHistoryResponse(versions=out)
