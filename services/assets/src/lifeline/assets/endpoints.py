"""REST edge of assets: thin; parsing and rendering only, logic in service.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from lifeline.kit import i18n
from lifeline.kit.api import client_address
from lifeline.kit.auth import PrincipalDep
from lifeline.kit.catalogue import Domain
from lifeline.kit.problems import ProblemError

from .schemas import (
    FacilityCreate,
    FacilityPage,
    FacilityPublic,
    FacilityStatus,
    FacilityUpdate,
    HistoryPublic,
    RetireIn,
    SensorCreate,
    SensorPage,
    SensorPublic,
    SensorUpdate,
    UnitCreate,
    UnitPage,
    UnitPublic,
    UnitUpdate,
)
from .service import MAX_PAGE, AssetsService

router = APIRouter(prefix="/v1", tags=["assets"])

i18n.register(
    {
        "assets.bad_time": {
            "zh-CN": "{field} 须为毫秒时间戳或带时区的 RFC 3339 时间",
            "en": "{field} must be epoch milliseconds or RFC 3339 with an offset",
        },
    }
)


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool.
async def get_service(request: Request) -> AssetsService:
    return request.app.state.assets  # type: ignore[no-any-return]


ServiceDep = Annotated[AssetsService, Depends(get_service)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
RegionPrefix = Annotated[str | None, Query(pattern=r"^\d{1,6}$", description="Region code prefix, e.g. 3401")]
Text = Annotated[str | None, Query(alias="q", max_length=100, description="Part of the name or code")]


def parse_time_ms(raw: str, field: str) -> int:
    """Epoch milliseconds, or RFC 3339 with an offset (a time without one is ambiguous)."""
    if raw.lstrip("-").isdigit():
        return int(raw)
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None:
        raise ProblemError(400, detail="assets.bad_time", params={"field": field})
    return int(dt.timestamp() * 1000)


def _body(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")  # type: ignore[no-any-return]


def _changes(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)  # type: ignore[no-any-return]


# --- facilities ---------------------------------------------------------------------------------------


@router.post("/facilities", response_model=FacilityPublic, status_code=201, summary="Register a facility")
async def create_facility(
    request: Request, facility_in: FacilityCreate, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.create_facility(
        facility_in=_body(facility_in), principal=principal, source=client_address(request)
    )


@router.get("/facilities", response_model=FacilityPage, summary="Facilities by code")
async def list_facilities(
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
    kind: Domain | None = None,
    status: FacilityStatus | None = None,
    region: RegionPrefix = None,
    q: Text = None,
    limit: Limit = 100,
    page_token: str | None = None,
) -> dict[str, Any]:
    items, token = await service.page(
        entity="facility",
        principal=principal,
        equals={"kind": kind and str(kind), "status": status},
        region_prefix=region,
        text=q,
        limit=limit,
        page_token=page_token,
        source=client_address(request),
    )
    return {"facilities": items, "next_page_token": token}


@router.get("/facilities/{code}", response_model=FacilityPublic, summary="A facility, now or at a past time")
async def get_facility(
    request: Request,
    code: str,
    principal: PrincipalDep,
    service: ServiceDep,
    as_of: Annotated[str | None, Query(description="RFC 3339 time or epoch milliseconds")] = None,
) -> dict[str, Any]:
    return await service.get(
        entity="facility",
        key=code,
        principal=principal,
        as_of_ms=parse_time_ms(as_of, "as_of") if as_of else None,
        source=client_address(request),
    )


@router.patch("/facilities/{code}", response_model=FacilityPublic, summary="Change a facility")
async def update_facility(
    request: Request, code: str, facility_in: FacilityUpdate, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.update_facility(
        code=code, changes=_changes(facility_in), principal=principal, source=client_address(request)
    )


@router.post("/facilities/{code}/retire", response_model=FacilityPublic, summary="Retire a facility")
async def retire_facility(
    request: Request, code: str, principal: PrincipalDep, service: ServiceDep, retire_in: RetireIn | None = None
) -> dict[str, Any]:
    return await service.retire(
        entity="facility",
        key=code,
        reason=retire_in.reason if retire_in else None,
        principal=principal,
        source=client_address(request),
    )


@router.get("/facilities/{code}/history", response_model=HistoryPublic, summary="Every version of a facility")
async def facility_history(request: Request, code: str, principal: PrincipalDep, service: ServiceDep) -> dict[str, Any]:
    versions = await service.history(entity="facility", key=code, principal=principal, source=client_address(request))
    return {"entity": "facility", "id": code, "versions": versions}


# --- sensors ------------------------------------------------------------------------------------------


@router.post("/sensors", response_model=SensorPublic, status_code=201, summary="Register a sensor")
async def create_sensor(
    request: Request, sensor_in: SensorCreate, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.create_sensor(sensor_in=_body(sensor_in), principal=principal, source=client_address(request))


@router.get("/sensors", response_model=SensorPage, summary="Sensors by id")
async def list_sensors(
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
    facility_code: str | None = None,
    quantity: str | None = None,
    status: Annotated[str | None, Query(pattern="^(active|retired)$")] = None,
    region: RegionPrefix = None,
    q: Text = None,
    limit: Limit = 100,
    page_token: str | None = None,
) -> dict[str, Any]:
    items, token = await service.page(
        entity="sensor",
        principal=principal,
        equals={"facility_code": facility_code, "quantity": quantity, "status": status},
        region_prefix=region,
        text=q,
        limit=limit,
        page_token=page_token,
        source=client_address(request),
    )
    return {"sensors": items, "next_page_token": token}


@router.get("/sensors/{sensor_id}", response_model=SensorPublic, summary="A sensor")
async def get_sensor(request: Request, sensor_id: str, principal: PrincipalDep, service: ServiceDep) -> dict[str, Any]:
    return await service.get(entity="sensor", key=sensor_id, principal=principal, source=client_address(request))


@router.patch("/sensors/{sensor_id}", response_model=SensorPublic, summary="Change a sensor")
async def update_sensor(
    request: Request, sensor_id: str, sensor_in: SensorUpdate, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.update_sensor(
        sensor_id=sensor_id, changes=_changes(sensor_in), principal=principal, source=client_address(request)
    )


@router.post("/sensors/{sensor_id}/retire", response_model=SensorPublic, summary="Retire a sensor")
async def retire_sensor(
    request: Request, sensor_id: str, principal: PrincipalDep, service: ServiceDep, retire_in: RetireIn | None = None
) -> dict[str, Any]:
    return await service.retire(
        entity="sensor",
        key=sensor_id,
        reason=retire_in.reason if retire_in else None,
        principal=principal,
        source=client_address(request),
    )


# --- responsible units --------------------------------------------------------------------------------


@router.post("/units", response_model=UnitPublic, status_code=201, summary="Register a responsible unit")
async def create_unit(
    request: Request, unit_in: UnitCreate, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.create_unit(unit_in=_body(unit_in), principal=principal, source=client_address(request))


@router.get("/units", response_model=UnitPage, summary="Responsible units by id")
async def list_units(
    request: Request,
    principal: PrincipalDep,
    service: ServiceDep,
    status: Annotated[str | None, Query(pattern="^(active|retired)$")] = None,
    region: RegionPrefix = None,
    q: Text = None,
    limit: Limit = 100,
    page_token: str | None = None,
) -> dict[str, Any]:
    items, token = await service.page(
        entity="unit",
        principal=principal,
        equals={"status": status},
        region_prefix=region,
        text=q,
        limit=limit,
        page_token=page_token,
        source=client_address(request),
    )
    return {"units": items, "next_page_token": token}


@router.get("/units/{unit_id}", response_model=UnitPublic, summary="A responsible unit")
async def get_unit(request: Request, unit_id: str, principal: PrincipalDep, service: ServiceDep) -> dict[str, Any]:
    return await service.get(entity="unit", key=unit_id, principal=principal, source=client_address(request))


@router.patch("/units/{unit_id}", response_model=UnitPublic, summary="Change a responsible unit")
async def update_unit(
    request: Request, unit_id: str, unit_in: UnitUpdate, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.update_unit(
        unit_id=unit_id, changes=_changes(unit_in), principal=principal, source=client_address(request)
    )


@router.post("/units/{unit_id}/retire", response_model=UnitPublic, summary="Retire a responsible unit")
async def retire_unit(
    request: Request, unit_id: str, principal: PrincipalDep, service: ServiceDep, retire_in: RetireIn | None = None
) -> dict[str, Any]:
    return await service.retire(
        entity="unit",
        key=unit_id,
        reason=retire_in.reason if retire_in else None,
        principal=principal,
        source=client_address(request),
    )
