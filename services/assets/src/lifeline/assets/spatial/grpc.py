"""The spatial RPCs of AssetRegistry, mixed into its servicer: thin, as the REST edge."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from lifeline.kit.api import invalid_field
from lifeline.kit.auth import current_principal
from lifeline.v1 import assets_pb2 as A

from ..messages import KIND, SENSOR_STATUS_NAME, facility_proto, geometry_proto, risk_proto, sensor_proto
from ..service import AssetsService
from .service import Filters, SpatialService

_ENTITY = {A.ASSET_ENTITY_FACILITY: "facility", A.ASSET_ENTITY_SENSOR: "sensor", A.ASSET_ENTITY_RISK_SOURCE: "risk"}
_ENTITY_VALUE = {name: value for value, name in _ENTITY.items()}
_ITEM = {
    "facility": ("facility", facility_proto),
    "sensor": ("sensor", sensor_proto),
    "risk": ("risk_source", risk_proto),
}


def _filters(msg: A.SpatialFilter) -> Filters:
    entities = []
    for value in msg.entities:
        if value not in _ENTITY:
            raise invalid_field(
                "filter.entities",
                "spatial.bad_entity",
                entity=A.AssetEntity.Name(value),
                entities="FACILITY, SENSOR, RISK_SOURCE",
            )
        entities.append(_ENTITY[value])
    return Filters(
        entities=tuple(entities) or ("facility",),
        kind=msg.kind or None,
        status=msg.status or None,
        region=msg.region_prefix or None,
    )


def _hit(item: dict[str, Any]) -> A.SpatialHit:
    hit = A.SpatialHit(
        entity=_ENTITY_VALUE[item["entity"]],
        id=item["id"],
        region=item["region"],
        kind=item["kind"],
        status=item["status"],
        geometry=geometry_proto(item["geometry"]),
    )
    if item["distance_m"] is not None:
        hit.distance_m = item["distance_m"]
    if item["doc"] is not None:
        field, to_proto = _ITEM[item["entity"]]
        getattr(hit, field).CopyFrom(to_proto(item["doc"]))
    return hit


class SpatialRpcs:
    """SearchArea, FindNearest, FindNearRiskSource, SensorsAlongPath."""

    service: AssetsService

    @cached_property
    def spatial(self) -> SpatialService:
        return SpatialService(db=self.service.db, assets=self.service)

    async def SearchArea(self, request: Any, context: Any) -> A.SearchAreaResponse:
        common = {
            "filters": _filters(request.filter),
            "limit": request.limit or 100,
            "principal": current_principal(),
            "source": context.peer(),
        }
        if request.HasField("bbox"):
            b = request.bbox
            found = await self.spatial.in_bbox(box=[b.min_lon, b.min_lat, b.max_lon, b.max_lat], **common)
        elif request.HasField("circle"):
            c = request.circle
            found = await self.spatial.within(lon=c.center.lon, lat=c.center.lat, radius_m=c.radius_m, **common)
        else:
            raise invalid_field("area", "spatial.where")
        return A.SearchAreaResponse(hits=[_hit(i) for i in found["items"]], truncated=found["truncated"])

    async def FindNearest(self, request: Any, context: Any) -> A.FindNearestResponse:
        found = await self.spatial.nearest(
            lon=request.point.lon,
            lat=request.point.lat,
            k=request.k or 10,
            filters=_filters(request.filter),
            principal=current_principal(),
            source=context.peer(),
        )
        return A.FindNearestResponse(hits=[_hit(i) for i in found["items"]])

    async def FindNearRiskSource(self, request: Any, context: Any) -> A.FindNearRiskSourceResponse:
        found = await self.spatial.near_risk(
            risk_id=request.risk_source_id,
            distance_m=request.distance_m,
            filters=_filters(request.filter),
            limit=request.limit or 100,
            principal=current_principal(),
            source=context.peer(),
        )
        return A.FindNearRiskSourceResponse(hits=[_hit(i) for i in found["items"]], truncated=found["truncated"])

    async def SensorsAlongPath(self, request: Any, context: Any) -> A.SensorsAlongPathResponse:
        found = await self.spatial.sensors_along(
            from_code=request.from_code,
            to_code=request.to_code,
            quantity=request.quantity or None,
            status=SENSOR_STATUS_NAME.get(request.status),
            principal=current_principal(),
            source=context.peer(),
        )
        return A.SensorsAlongPathResponse(
            upstream=found["direction"] == "upstream",
            path=[A.PathLeg(**{**leg, "kind": KIND[leg["kind"]]}) for leg in found["path"]],
            sensors=[A.PathSensor(along_m=s["along_m"], sensor=sensor_proto(s["sensor"])) for s in found["sensors"]],
        )
