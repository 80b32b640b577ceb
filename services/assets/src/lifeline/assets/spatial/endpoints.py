"""REST edge of the spatial queries: parsing and rendering only, logic in service.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from lifeline.kit.api import client_address, invalid_field
from lifeline.kit.auth import PrincipalDep

from .schemas import Entity, PathSensors, SpatialPage
from .service import MAX_K, MAX_RESULTS, Filters, SpatialService

router = APIRouter(prefix="/v1/spatial", tags=["spatial"])


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool.
async def get_spatial(request: Request) -> SpatialService:
    state = request.app.state
    # Made on first use beside the assets service, on its database (app.py only mounts the router).
    if getattr(state, "spatial", None) is None:
        state.spatial = SpatialService(db=state.assets.db, assets=state.assets)
    return state.spatial  # type: ignore[no-any-return]


SpatialDep = Annotated[SpatialService, Depends(get_spatial)]
Entities = Annotated[list[Entity] | None, Query(description="Entity types (repeat the parameter); default facility")]
Kind = Annotated[str | None, Query(max_length=64, description="Facility kind, sensor quantity or risk hazard")]
Status = Annotated[str | None, Query(max_length=16, description="Only this status (default: all but retired)")]
RegionPrefix = Annotated[str | None, Query(pattern=r"^\d{1,6}$", description="Region code prefix, e.g. 3401")]
Limit = Annotated[int, Query(description=f"At most this many, 1–{MAX_RESULTS}")]


def _numbers(raw: str, count: int, field: str, key: str) -> list[float]:
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise invalid_field(field, key, param=field)
    return values


def _filters(entity: list[Entity] | None, kind: str | None, status: str | None, region: str | None) -> Filters:
    return Filters(entities=tuple(entity or ("facility",)), kind=kind, status=status, region=region)


@router.get("/features", response_model=SpatialPage, summary="Facilities, sensors or risk sources in a box or circle")
async def features(
    request: Request,
    principal: PrincipalDep,
    spatial: SpatialDep,
    bbox: Annotated[str | None, Query(description="min_lon,min_lat,max_lon,max_lat (CGCS2000)")] = None,
    near: Annotated[str | None, Query(description="lon,lat of the circle's centre")] = None,
    radius_m: Annotated[float | None, Query(description="The circle's radius in metres")] = None,
    entity: Entities = None,
    kind: Kind = None,
    status: Status = None,
    region: RegionPrefix = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    filters = _filters(entity, kind, status, region)
    source = client_address(request)
    if bbox is not None and near is None and radius_m is None:
        box = _numbers(bbox, 4, "bbox", "spatial.bad_bbox")
        return await spatial.in_bbox(box=box, filters=filters, limit=limit, principal=principal, source=source)
    if bbox is None and near is not None and radius_m is not None:
        lon, lat = _numbers(near, 2, "near", "spatial.bad_point")
        return await spatial.within(
            lon=lon, lat=lat, radius_m=radius_m, filters=filters, limit=limit, principal=principal, source=source
        )
    raise invalid_field("bbox", "spatial.where")


@router.get("/nearest", response_model=SpatialPage, summary="The k nearest to a point, with distances")
async def nearest(
    request: Request,
    principal: PrincipalDep,
    spatial: SpatialDep,
    lon: float,
    lat: float,
    k: Annotated[int, Query(description=f"How many, 1–{MAX_K}")] = 10,
    entity: Entities = None,
    kind: Kind = None,
    status: Status = None,
    region: RegionPrefix = None,
) -> dict[str, Any]:
    return await spatial.nearest(
        lon=lon,
        lat=lat,
        k=k,
        filters=_filters(entity, kind, status, region),
        principal=principal,
        source=client_address(request),
    )


@router.get(
    "/risks/{risk_id}/nearby", response_model=SpatialPage, summary="Facilities within a distance of a risk source"
)
async def near_risk(
    request: Request,
    risk_id: str,
    principal: PrincipalDep,
    spatial: SpatialDep,
    distance_m: Annotated[float, Query(description="Metres from the risk source's point or line")],
    entity: Entities = None,
    kind: Kind = None,
    status: Status = None,
    region: RegionPrefix = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    return await spatial.near_risk(
        risk_id=risk_id,
        distance_m=distance_m,
        filters=_filters(entity, kind, status, region),
        limit=limit,
        principal=principal,
        source=client_address(request),
    )


@router.get(
    "/path/sensors", response_model=PathSensors, summary="Sensors along the network path between two facilities"
)
async def path_sensors(
    request: Request,
    principal: PrincipalDep,
    spatial: SpatialDep,
    from_code: Annotated[
        str, Query(alias="from", pattern=r"^\d{16}$", description="Facility code where the path starts")
    ],
    to_code: Annotated[str, Query(alias="to", pattern=r"^\d{16}$", description="Facility code where it ends")],
    quantity: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(pattern="^(active|retired)$")] = None,
) -> dict[str, Any]:
    return await spatial.sensors_along(
        from_code=from_code,
        to_code=to_code,
        quantity=quantity,
        status=status,
        principal=principal,
        source=client_address(request),
    )
