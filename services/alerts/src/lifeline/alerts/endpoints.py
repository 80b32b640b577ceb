"""REST edge of alerts: thin; parsing and rendering only, logic in service.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from lifeline.kit.api import client_address
from lifeline.kit.auth import PrincipalDep
from lifeline.kit.catalogue import Level

from .schemas import (
    AlertDetail,
    AlertPage,
    AlertPublic,
    HistoryPublic,
    RuleCreate,
    RulePage,
    RulePublic,
    RuleUpdate,
    SilenceCreate,
    SilencePage,
    SilencePublic,
    TransitionIn,
)
from .service import MAX_PAGE, AlertsService
from .workflow import State

router = APIRouter(prefix="/v1", tags=["alerts"])


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool.
async def get_service(request: Request) -> AlertsService:
    return request.app.state.alerts  # type: ignore[no-any-return]


ServiceDep = Annotated[AlertsService, Depends(get_service)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
EpochMs = Annotated[int | None, Query(ge=0, description="Epoch milliseconds")]


@router.get("/alerts", response_model=AlertPage, summary="Alerts in the caller's region, newest first")
async def list_alerts(
    principal: PrincipalDep,
    service: ServiceDep,
    level: Level | None = None,
    state: State | None = None,
    domain: Annotated[str | None, Query(max_length=32, description="Facility kind: gas, water, ...")] = None,
    facility_code: Annotated[str | None, Query(pattern=r"^\d{16}$")] = None,
    region: Annotated[str | None, Query(pattern=r"^\d{1,6}$", description="Region code prefix")] = None,
    incident_id: Annotated[str | None, Query(max_length=36)] = None,
    from_ms: EpochMs = None,
    to_ms: EpochMs = None,
    overdue: bool = False,
    include_closed: bool = False,
    limit: Limit = 100,
    page_token: str | None = None,
) -> dict[str, Any]:
    items, token = await service.list_alerts(
        principal=principal,
        level=level and str(level),
        state=state and str(state),
        domain=domain,
        facility_code=facility_code,
        region_prefix=region,
        from_ms=from_ms,
        to_ms=to_ms,
        overdue=overdue,
        include_closed=include_closed,
        incident_id=incident_id,
        limit=limit,
        page_token=page_token,
    )
    return {"alerts": items, "next_page_token": token}


@router.get("/alerts/{alert_id}", response_model=AlertDetail, summary="An alert with its full history")
async def get_alert(request: Request, alert_id: str, principal: PrincipalDep, service: ServiceDep) -> dict[str, Any]:
    return await service.get_alert(alert_id=alert_id, principal=principal, source=client_address(request))


@router.post("/alerts/{alert_id}/transitions", response_model=AlertPublic, summary="Take the next step of the workflow")
async def transition(
    request: Request, alert_id: str, body: TransitionIn, principal: PrincipalDep, service: ServiceDep
) -> dict[str, Any]:
    alert, _ = await service.transition(
        alert_id=alert_id,
        to_state=body.to_state,
        principal=principal,
        comment=body.comment,
        attachments=[a.model_dump() for a in body.attachments],
        unit_id=body.unit_id,
        expected_version=body.expected_version,
        source=client_address(request),
    )
    return alert


@router.get("/alerts/{alert_id}/history", response_model=list[HistoryPublic], summary="An alert's history")
async def alert_history(
    request: Request, alert_id: str, principal: PrincipalDep, service: ServiceDep
) -> list[dict[str, Any]]:
    detail = await service.get_alert(alert_id=alert_id, principal=principal, source=client_address(request))
    return detail["history"]  # type: ignore[no-any-return]


@router.get("/rules", response_model=RulePage, summary="Catalogue defaults and managed rules")
async def list_rules(
    principal: PrincipalDep,
    service: ServiceDep,
    quantity: Annotated[str | None, Query(max_length=64)] = None,
    origin: Annotated[str | None, Query(pattern=r"^(catalogue|api)$")] = None,
) -> dict[str, Any]:
    return {"rules": await service.list_rules(principal=principal, quantity=quantity, origin=origin)}


@router.post("/rules", response_model=RulePublic, status_code=201, summary="Add a rule")
async def create_rule(request: Request, body: RuleCreate, principal: PrincipalDep, service: ServiceDep) -> Any:
    return await service.create_rule(
        rule_in=body.model_dump(mode="json"), principal=principal, source=client_address(request)
    )


@router.get("/rules/{rule_id}", summary="A rule (managed rules with their history)")
async def get_rule(rule_id: str, principal: PrincipalDep, service: ServiceDep) -> dict[str, Any]:
    return await service.get_rule(rule_id=rule_id, principal=principal)


@router.patch("/rules/{rule_id}", response_model=RulePublic, summary="Change a rule")
async def update_rule(
    request: Request, rule_id: str, body: RuleUpdate, principal: PrincipalDep, service: ServiceDep
) -> Any:
    return await service.update_rule(
        rule_id=rule_id,
        changes=body.model_dump(mode="json", exclude_unset=True),
        principal=principal,
        source=client_address(request),
    )


@router.delete("/rules/{rule_id}", status_code=204, summary="Delete a rule (kept in its history)")
async def delete_rule(request: Request, rule_id: str, principal: PrincipalDep, service: ServiceDep) -> None:
    await service.update_rule(
        rule_id=rule_id, changes={}, principal=principal, source=client_address(request), delete=True
    )


@router.get("/silences", response_model=SilencePage, summary="Silences")
async def list_silences(principal: PrincipalDep, service: ServiceDep, include_expired: bool = False) -> dict[str, Any]:
    return {"silences": await service.list_silences(principal=principal, include_expired=include_expired)}


@router.post("/silences", response_model=SilencePublic, status_code=201, summary="Silence matching alerts for a while")
async def create_silence(request: Request, body: SilenceCreate, principal: PrincipalDep, service: ServiceDep) -> Any:
    return await service.create_silence(
        silence_in=body.model_dump(mode="json"), principal=principal, source=client_address(request)
    )


@router.post("/silences/{silence_id}/expire", response_model=SilencePublic, summary="End a silence now")
async def expire_silence(request: Request, silence_id: str, principal: PrincipalDep, service: ServiceDep) -> Any:
    return await service.expire_silence(silence_id=silence_id, principal=principal, source=client_address(request))
