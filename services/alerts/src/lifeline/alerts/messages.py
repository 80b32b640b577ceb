"""Alerts as protobuf messages: the AlertEvent published for every change, and the gRPC shapes."""

from __future__ import annotations

from typing import Any

from lifeline.v1 import alerts_pb2 as P
from lifeline.v1 import assets_pb2, common_pb2

LEVEL = {
    "I": common_pb2.WARNING_LEVEL_I_RED,
    "II": common_pb2.WARNING_LEVEL_II_ORANGE,
    "III": common_pb2.WARNING_LEVEL_III_YELLOW,
    "IV": common_pb2.WARNING_LEVEL_IV_BLUE,
}
LEVEL_NAME = {v: k for k, v in LEVEL.items()}
STATE = {n.removeprefix("ALERT_STATE_").lower(): v for n, v in P.AlertState.items() if v}
STATE_NAME = {v: k for k, v in STATE.items()}
EVENT_KIND = {n.removeprefix("ALERT_EVENT_KIND_").lower(): v for n, v in P.AlertEventKind.items() if v}
STEP = {n.removeprefix("WORKFLOW_STEP_").lower(): v for n, v in P.WorkflowStep.items() if v}
MEASURE = {n.removeprefix("RULE_MEASURE_").lower(): v for n, v in P.RuleMeasure.items() if v}
DIRECTION = {n.removeprefix("RULE_DIRECTION_").lower(): v for n, v in P.RuleDirection.items() if v}
RULE_KIND = {n.removeprefix("RULE_KIND_").lower(): v for n, v in P.RuleKind.items() if v}
ORIGIN = {n.removeprefix("RULE_ORIGIN_").lower(): v for n, v in P.RuleOrigin.items() if v}
FACILITY_KIND = {n.removeprefix("FACILITY_KIND_").lower(): v for n, v in assets_pb2.FacilityKind.items() if v}
FACILITY_KIND_NAME = {v: k for k, v in FACILITY_KIND.items()}
CONDITION = {"active": P.ALERT_CONDITION_ACTIVE, "cleared": P.ALERT_CONDITION_CLEARED}


def _opt(v: Any) -> Any:
    return v if v is not None else 0


def alert_proto(a: dict[str, Any]) -> P.Alert:
    return P.Alert(
        id=a["id"],
        fingerprint=a["fingerprint"],
        rule_id=a["rule_id"],
        sensor_id=a["sensor_id"],
        facility_code=a["facility_code"],
        facility_kind=FACILITY_KIND.get(a["facility_kind"], 0),
        quantity=a["quantity"],
        region=a["region"],
        level=LEVEL[a["level"]],
        peak_level=LEVEL[a["peak_level"]],
        state=STATE[a["state"]],
        condition=CONDITION[a["condition"]],
        incident_id=a["incident_id"],
        unit_id=a.get("unit_id") or "",
        measure=MEASURE.get(a["measure"], 0),
        first_value=_opt(a.get("first_value")),
        last_value=_opt(a.get("last_value")),
        peak_value=_opt(a.get("peak_value")),
        breach_count=a["breach_count"],
        raised_ms=a["raised_ms"],
        updated_ms=a["updated_ms"],
        cleared_ms=_opt(a.get("cleared_ms")),
        closed_ms=_opt(a.get("closed_ms")),
        due_ms=_opt(a.get("due_ms")),
        due_step=STEP.get(a.get("due_step") or "", 0),
        overdue=a["overdue"],
        suppressed=a["suppressed"],
        suppressed_by=a.get("suppressed_by") or "",
        version=a["version"],
        first_device_time_ms=a.get("first_device_time_ms") or 0,
    )


def history_proto(h: dict[str, Any]) -> P.AlertHistoryEntry:
    return P.AlertHistoryEntry(
        seq=h["seq"],
        kind=EVENT_KIND.get(h["kind"], 0),
        at_ms=h["at_ms"],
        actor=h["actor"],
        from_state=STATE.get(h.get("from_state") or "", 0),
        to_state=STATE.get(h.get("to_state") or "", 0),
        from_level=LEVEL.get(h.get("from_level") or "", 0),
        to_level=LEVEL.get(h.get("to_level") or "", 0),
        comment=h.get("comment") or "",
        attachments=[P.AlertAttachment(**a) for a in h.get("attachments") or []],
        value=_opt(h.get("value")),
        step=STEP.get(h.get("step") or "", 0),
        unit_id=h.get("unit_id") or "",
    )


def alert_event(kind: str, alert: dict[str, Any], entry: dict[str, Any], reading_time_ms: int) -> P.AlertEvent:
    """The event of one alert change (published on events.alerts.<kind>.<region>)."""
    return P.AlertEvent(
        kind=EVENT_KIND[kind],
        alert=alert_proto(alert),
        entry=history_proto(entry),
        reading_time_ms=reading_time_ms,
    )


def rule_proto(doc: dict[str, Any]) -> P.Rule:
    conditions = []
    for c in doc.get("conditions", []):
        levels = []
        for name, v in c["levels"].items():
            if isinstance(v, list | tuple):
                levels.append(P.RuleLevel(level=LEVEL[name], low=v[0], high=v[1]))
            else:
                levels.append(P.RuleLevel(level=LEVEL[name], value=v))
        conditions.append(
            P.RuleCondition(
                quantity=c["quantity"],
                measure=MEASURE.get(c.get("measure", "value"), 0),
                direction=DIRECTION.get(c.get("direction", "above"), 0),
                levels=levels,
                clear_margin=c.get("clear_margin") or 0.0,
                baseline_days=c.get("baseline_days") or 0,
            )
        )
    return P.Rule(
        id=doc["id"],
        name=doc["name"],
        kind=RULE_KIND[doc["kind"]],
        origin=ORIGIN.get(doc.get("origin", "api"), 0),
        region=doc.get("region", ""),
        facility_kind=FACILITY_KIND.get(doc.get("facility_kind", ""), 0),
        facility_code=doc.get("facility_code", ""),
        sensor_id=doc.get("sensor_id", ""),
        conditions=conditions,
        for_s=doc.get("for_s", 0),
        clear_for_s=doc.get("clear_for_s", 0),
        level=LEVEL.get(doc.get("level") or "", 0),
        enabled=doc.get("enabled", True),
        version=doc.get("version", 0),
        updated_ms=doc.get("updated_ms", 0),
        updated_by=doc.get("updated_by", ""),
    )


def rule_from_proto(r: P.Rule) -> dict[str, Any]:
    """A Rule message as the API's rule document (validated by the service like REST input)."""
    inv_measure = {v: k for k, v in MEASURE.items()}
    inv_direction = {v: k for k, v in DIRECTION.items()}
    inv_kind = {v: k for k, v in RULE_KIND.items()}
    conditions = []
    for c in r.conditions:
        levels: dict[str, Any] = {}
        for lv in c.levels:
            name = LEVEL_NAME.get(lv.level, "")
            levels[name] = [lv.low, lv.high] if c.direction == P.RULE_DIRECTION_OUTSIDE else lv.value
        conditions.append(
            {
                "quantity": c.quantity,
                "measure": inv_measure.get(c.measure, "value"),
                "direction": inv_direction.get(c.direction, "above"),
                "levels": levels,
                "clear_margin": c.clear_margin or None,
                "baseline_days": c.baseline_days or 7,
            }
        )
    return {
        "id": r.id or None,
        "name": r.name,
        "kind": inv_kind.get(r.kind, "threshold"),
        "region": r.region,
        "facility_kind": FACILITY_KIND_NAME.get(r.facility_kind, ""),
        "facility_code": r.facility_code,
        "sensor_id": r.sensor_id,
        "conditions": conditions,
        "for_s": r.for_s,
        "clear_for_s": r.clear_for_s,
        "level": LEVEL_NAME.get(r.level),
        "enabled": r.enabled,
    }


def silence_proto(s: dict[str, Any]) -> P.Silence:
    return P.Silence(
        id=s["id"],
        sensor_id=s["sensor_id"],
        facility_code=s["facility_code"],
        facility_kind=FACILITY_KIND.get(s["facility_kind"], 0),
        region=s["region"],
        quantity=s["quantity"],
        starts_ms=s["starts_ms"],
        ends_ms=s["ends_ms"],
        comment=s["comment"],
        created_by=s["created_by"],
        created_ms=s["created_ms"],
        expired=s.get("expired", False),
    )
