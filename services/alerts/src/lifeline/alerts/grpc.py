"""gRPC edge of alerts: AlertService, scoped by the caller's region and role like REST.

``Watch`` is part of the contract; its live stream comes with the notifications slice (the servicer
answers UNIMPLEMENTED until then).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from lifeline.kit.auth import current_principal
from lifeline.kit.problems import FieldError, ProblemError
from lifeline.v1 import alerts_pb2 as P
from lifeline.v1 import alerts_pb2_grpc

from .messages import (
    FACILITY_KIND_NAME,
    LEVEL_NAME,
    STATE_NAME,
    alert_proto,
    history_proto,
    rule_from_proto,
    rule_proto,
    silence_proto,
)
from .schemas import RuleCreate, SilenceCreate
from .service import AlertsService
from .workflow import State


def _invalid_input(field: str, reason: str) -> ProblemError:
    return ProblemError(422, errors=[FieldError(field, "invalid", reason)])


def _validated(model: type[BaseModel], doc: dict[str, Any]) -> dict[str, Any]:
    """Check a gRPC request's content with the REST model, so both edges refuse the same input."""
    try:
        return model.model_validate(doc).model_dump(mode="json")
    except ValidationError as exc:
        errors = [FieldError(".".join(str(p) for p in e["loc"]), "invalid", e["msg"]) for e in exc.errors()]
        raise ProblemError(422, errors=errors) from None


_ORIGIN_NAME = {P.RULE_ORIGIN_CATALOGUE: "catalogue", P.RULE_ORIGIN_API: "api"}


class AlertServiceServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, service: AlertsService) -> None:
        self.service = service

    async def ListAlerts(self, request: Any, context: Any) -> P.ListAlertsResponse:
        items, token = await self.service.list_alerts(
            principal=current_principal(),
            level=LEVEL_NAME.get(request.level),
            state=STATE_NAME.get(request.state),
            domain=FACILITY_KIND_NAME.get(request.domain),
            facility_code=request.facility_code or None,
            region_prefix=request.region_prefix or None,
            from_ms=request.from_ms or None,
            to_ms=request.to_ms or None,
            overdue=request.overdue,
            include_closed=request.include_closed,
            incident_id=request.incident_id or None,
            limit=min(request.limit or 100, 1000),
            page_token=request.page_token or None,
        )
        return P.ListAlertsResponse(alerts=[alert_proto(a) for a in items], next_page_token=token or "")

    async def GetAlert(self, request: Any, context: Any) -> P.GetAlertResponse:
        detail = await self.service.get_alert(alert_id=request.id, principal=current_principal(), source=context.peer())
        return P.GetAlertResponse(alert=alert_proto(detail), history=[history_proto(h) for h in detail["history"]])

    async def Transition(self, request: Any, context: Any) -> P.TransitionResponse:
        to_name = STATE_NAME.get(request.to_state)
        if to_name is None:
            raise _invalid_input("to_state", "a workflow state")
        alert, entry = await self.service.transition(
            alert_id=request.id,
            to_state=State(to_name),
            principal=current_principal(),
            comment=request.comment,
            attachments=[{"ref": a.ref, "name": a.name, "media_type": a.media_type} for a in request.attachments],
            unit_id=request.unit_id or None,
            expected_version=request.expected_version or None,
            source=context.peer(),
        )
        return P.TransitionResponse(alert=alert_proto(alert), entry=history_proto(entry))

    async def ListRules(self, request: Any, context: Any) -> P.ListRulesResponse:
        docs = await self.service.list_rules(
            principal=current_principal(), quantity=request.quantity or None, origin=_ORIGIN_NAME.get(request.origin)
        )
        return P.ListRulesResponse(rules=[rule_proto(d) for d in docs])

    async def GetRule(self, request: Any, context: Any) -> P.GetRuleResponse:
        return P.GetRuleResponse(
            rule=rule_proto(await self.service.get_rule(rule_id=request.id, principal=current_principal()))
        )

    async def CreateRule(self, request: Any, context: Any) -> P.CreateRuleResponse:
        doc = await self.service.create_rule(
            rule_in=_validated(RuleCreate, rule_from_proto(request.rule)),
            principal=current_principal(),
            source=context.peer(),
        )
        return P.CreateRuleResponse(rule=rule_proto(doc))

    async def UpdateRule(self, request: Any, context: Any) -> P.UpdateRuleResponse:
        changes = rule_from_proto(request.rule)
        changes.pop("id", None)
        changes["expected_version"] = request.expected_version or None
        doc = await self.service.update_rule(
            rule_id=request.rule.id, changes=changes, principal=current_principal(), source=context.peer()
        )
        return P.UpdateRuleResponse(rule=rule_proto(doc))

    async def DeleteRule(self, request: Any, context: Any) -> P.DeleteRuleResponse:
        await self.service.update_rule(
            rule_id=request.id, changes={}, principal=current_principal(), source=context.peer(), delete=True
        )
        return P.DeleteRuleResponse()

    async def ListSilences(self, request: Any, context: Any) -> P.ListSilencesResponse:
        docs = await self.service.list_silences(principal=current_principal(), include_expired=request.include_expired)
        return P.ListSilencesResponse(silences=[silence_proto(d) for d in docs])

    async def CreateSilence(self, request: Any, context: Any) -> P.CreateSilenceResponse:
        s = request.silence
        doc = await self.service.create_silence(
            silence_in=_validated(
                SilenceCreate,
                {
                    "sensor_id": s.sensor_id,
                    "facility_code": s.facility_code,
                    "facility_kind": FACILITY_KIND_NAME.get(s.facility_kind, ""),
                    "region": s.region,
                    "quantity": s.quantity,
                    "starts_ms": s.starts_ms or None,
                    "ends_ms": s.ends_ms,
                    "comment": s.comment,
                },
            ),
            principal=current_principal(),
            source=context.peer(),
        )
        return P.CreateSilenceResponse(silence=silence_proto(doc))

    async def ExpireSilence(self, request: Any, context: Any) -> P.ExpireSilenceResponse:
        doc = await self.service.expire_silence(
            silence_id=request.id, principal=current_principal(), source=context.peer()
        )
        return P.ExpireSilenceResponse(silence=silence_proto(doc))
