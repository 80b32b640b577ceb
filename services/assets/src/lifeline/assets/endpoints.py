"""REST edge of assets: thin; parsing and rendering only, logic in service.py.

Every entity gets the same six routes from one function (create, list, get with ``as_of``, patch, retire,
history), so the entities differ only in their shapes (schemas.py) and their rules (service.py).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, which name the
# per-entity shapes through the closure of `_entity_routes`.

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel

from lifeline.kit import i18n
from lifeline.kit.api import client_address
from lifeline.kit.auth import PrincipalDep
from lifeline.kit.problems import ProblemError

from .schemas import (
    FacilityCreate,
    FacilityFilters,
    FacilityPage,
    FacilityPublic,
    FacilityUpdate,
    HistoryPublic,
    LinkCreate,
    LinkFilters,
    LinkKind,
    LinkPage,
    LinkPublic,
    LinkUpdate,
    RetireIn,
    RiskCreate,
    RiskFilters,
    RiskPage,
    RiskPublic,
    RiskUpdate,
    SensorCreate,
    SensorFilters,
    SensorPage,
    SensorPublic,
    SensorUpdate,
    Traversal,
    UnitCreate,
    UnitFilters,
    UnitPage,
    UnitPublic,
    UnitUpdate,
)
from .service import MAX_DEPTH, MAX_PAGE, AssetsService

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
AsOf = Annotated[str | None, Query(description="RFC 3339 time or epoch milliseconds")]
# Query parameters of the other assets routers (bulk export) that filter like the lists here.
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


Criteria = Callable[[Any], tuple[dict[str | tuple[str, ...], Any], dict[str, str | None]]]


def _entity_routes(
    entity: str,
    plural: str,
    key: str,
    create_in: type[BaseModel],
    update_in: type[BaseModel],
    public: type[BaseModel],
    page: type[BaseModel],
    filters: type[BaseModel],
    criteria: Criteria,
) -> None:
    """POST /{plural}, GET /{plural}, GET|PATCH /{plural}/{key}, POST …/retire, GET …/history."""
    name = entity.replace("_", " ")
    Key = Annotated[str, Path(alias=key)]

    @router.post(f"/{plural}", response_model=public, status_code=201, summary=f"Register a {name}")
    async def create(request: Request, body: create_in, principal: PrincipalDep, service: ServiceDep) -> Any:  # type: ignore[valid-type]
        data = body.model_dump(mode="json")  # type: ignore[attr-defined]
        return await service.create(entity=entity, data=data, principal=principal, source=client_address(request))

    @router.get(f"/{plural}", response_model=page, summary=f"A page of {plural} by {key}")
    async def listing(
        request: Request,
        principal: PrincipalDep,
        service: ServiceDep,
        query: Annotated[filters, Query()],  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        equals, contains = criteria(query)
        items, token = await service.page(
            entity=entity,
            principal=principal,
            equals=equals,
            contains=contains,
            region_prefix=query.region,  # type: ignore[attr-defined]
            text=query.q,  # type: ignore[attr-defined]
            limit=query.limit,  # type: ignore[attr-defined]
            page_token=query.page_token,  # type: ignore[attr-defined]
            source=client_address(request),
        )
        return {plural: items, "next_page_token": token}

    @router.get(f"/{plural}/{{{key}}}", response_model=public, summary=f"A {name}, now or at a past time")
    async def get(request: Request, id: Key, principal: PrincipalDep, service: ServiceDep, as_of: AsOf = None) -> Any:
        return await service.get(
            entity=entity,
            key=id,
            principal=principal,
            as_of_ms=parse_time_ms(as_of, "as_of") if as_of else None,
            source=client_address(request),
        )

    @router.patch(f"/{plural}/{{{key}}}", response_model=public, summary=f"Change a {name}")
    async def update(request: Request, id: Key, body: update_in, principal: PrincipalDep, service: ServiceDep) -> Any:  # type: ignore[valid-type]
        changes = body.model_dump(mode="json", exclude_unset=True)  # type: ignore[attr-defined]
        return await service.update(
            entity=entity, key=id, changes=changes, principal=principal, source=client_address(request)
        )

    @router.post(f"/{plural}/{{{key}}}/retire", response_model=public, summary=f"Retire a {name}")
    async def retire(
        request: Request, id: Key, principal: PrincipalDep, service: ServiceDep, retire_in: RetireIn | None = None
    ) -> Any:
        return await service.retire(
            entity=entity,
            key=id,
            reason=retire_in.reason if retire_in else None,
            principal=principal,
            source=client_address(request),
        )

    @router.get(f"/{plural}/{{{key}}}/history", response_model=HistoryPublic, summary=f"Every version of a {name}")
    async def history(request: Request, id: Key, principal: PrincipalDep, service: ServiceDep) -> dict[str, Any]:
        versions = await service.history(entity=entity, key=id, principal=principal, source=client_address(request))
        return {"entity": entity, "id": id, "versions": versions}


def _same(*fields: str) -> Criteria:
    """Filters that are column equalities of the same name."""
    return lambda q: ({f: getattr(q, f) for f in fields}, {})


_entity_routes(
    "facility",
    "facilities",
    "code",
    FacilityCreate,
    FacilityUpdate,
    FacilityPublic,
    FacilityPage,
    FacilityFilters,
    lambda q: ({"kind": q.kind and str(q.kind), "status": q.status}, {}),
)
_entity_routes(
    "sensor",
    "sensors",
    "sensor_id",
    SensorCreate,
    SensorUpdate,
    SensorPublic,
    SensorPage,
    SensorFilters,
    _same("facility_code", "quantity", "status"),
)
_entity_routes("unit", "units", "unit_id", UnitCreate, UnitUpdate, UnitPublic, UnitPage, UnitFilters, _same("status"))
_entity_routes(
    "risk",
    "risks",
    "risk_id",
    RiskCreate,
    RiskUpdate,
    RiskPublic,
    RiskPage,
    RiskFilters,
    lambda q: ({"hazard": q.hazard, "grade": q.grade, "status": q.status}, {"facility_codes": q.facility}),
)
_entity_routes(
    "link",
    "links",
    "link_id",
    LinkCreate,
    LinkUpdate,
    LinkPublic,
    LinkPage,
    LinkFilters,
    lambda q: (
        {
            "from_code": q.from_code,
            "to_code": q.to_code,
            ("from_code", "to_code"): q.facility,
            "kind": q.kind,
            "status": q.status,
        },
        {},
    ),
)


def _walk(downstream: bool) -> None:
    direction = "downstream" if downstream else "upstream"

    @router.get(
        f"/facilities/{{code}}/{direction}",
        response_model=Traversal,
        summary=f"Facilities {direction} of one, breadth first, with the path to each",
    )
    async def walk(
        request: Request,
        code: str,
        principal: PrincipalDep,
        service: ServiceDep,
        depth: Annotated[int, Query(ge=1, le=MAX_DEPTH)] = 10,
        kind: Annotated[list[LinkKind] | None, Query(description="Only links of these kinds")] = None,
    ) -> dict[str, Any]:
        return await service.traverse(
            code=code,
            downstream=downstream,
            principal=principal,
            max_depth=depth,
            kinds=kind,
            source=client_address(request),
        )


_walk(downstream=True)
_walk(downstream=False)
