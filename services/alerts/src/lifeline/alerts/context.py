"""Alerts' copy of the census: assets' change events as plain documents, and the engine's contexts from them.

Documents are the events' entities as JSON (``MessageToDict``), so fields assets adds later (threshold
overrides, setpoints, baselines, maintenance windows) are kept as they arrive and read defensively here:
an unknown or malformed field is ignored, never fatal for the evaluation of the other sensors.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from google.protobuf import json_format
from pydantic import ValidationError

from lifeline.kit.catalogue import Level, ThresholdRule
from lifeline.v1 import assets_pb2

from .engine import FacilityContext, SensorContext, ThresholdOverride, Window

log = logging.getLogger(__name__)

# Entity of an events.assets.<entity>.<region> subject → (event type, field holding the entity, key field).
ENTITIES: dict[str, tuple[type[Any], str, str]] = {
    "sensor": (assets_pb2.SensorChanged, "sensor", "sensor_id"),
    "facility": (assets_pb2.FacilityChanged, "facility", "code"),
    "unit": (assets_pb2.UnitChanged, "unit", "id"),
    "link": (assets_pb2.LinkChanged, "link", "id"),
    "risk": (assets_pb2.RiskSourceChanged, "risk", "id"),
}
_LEVEL_KEYS = {"IV": Level.IV, "III": Level.III, "II": Level.II, "I": Level.I}


def entity_doc(entity: str, payload: bytes) -> tuple[str, int, dict[str, Any]] | None:
    """(key, version, document) of an assets change event; None for entities alerts does not keep."""
    spec = ENTITIES.get(entity)
    if spec is None:
        return None
    cls, field, _ = spec
    event = cls.FromString(payload)
    return message_doc(entity, getattr(event, field), assets_pb2.ChangeKind.Name(event.change))


def message_doc(entity: str, message: Any, change: str) -> tuple[str, int, dict[str, Any]]:
    """(key, version, document) of an assets entity (the message in its change event)."""
    key = ENTITIES[entity][2]
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)
    doc["change"] = change.removeprefix("CHANGE_KIND_").lower()
    return str(doc.get(key, "")), int(doc.get("version", 0)), doc


def is_retired(doc: dict[str, Any]) -> bool:
    """Whether an assets entity is retired: by its event's change, its status enum or its ``retired`` flag.

    Assets never deletes; it retires, and a retired entity cannot change any more."""
    return (
        doc.get("change") == "retired"
        or doc.get("retired") is True
        or str(doc.get("status") or "").upper().endswith("_RETIRED")
    )


def _enum_name(value: Any, prefix: str) -> str:
    return sys.intern(str(value or "").removeprefix(prefix).lower())


def _shared(value: Any) -> str:
    """A field many entities repeat (quantity, region, facility code, kind): one string for all of them.

    Each decoded event carries its own copies: without this 10,000 sensors held ~30,000 equal strings
    (~1.8 MB) for a few hundred distinct values."""
    return sys.intern(str(value if value is not None else ""))


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _level(key: Any) -> Level | None:
    name = str(key).upper()
    for prefix in ("WARNING_LEVEL_", "LEVEL_"):
        name = name.removeprefix(prefix)
    return _LEVEL_KEYS.get(name.split("_")[0])


def _bound(value: Any, outside: bool) -> float | tuple[float, float] | None:
    if isinstance(value, dict):
        if outside:
            lo, hi = _float(value.get("low", 0.0)), _float(value.get("high", 0.0))
            return (lo, hi) if lo is not None and hi is not None else None
        return _float(value.get("value", 0.0))
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = _float(value[0]), _float(value[1])
        return (lo, hi) if lo is not None and hi is not None else None
    return _float(value)


def _levels(raw: Any, outside: bool) -> dict[Level, float | tuple[float, float]]:
    """Levels as assets sends them (a list of {level, value | low, high}) or as a table {IV: 5, ...}."""
    items: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(x.get("level"), x) for x in raw if isinstance(x, dict)]
    out: dict[Level, float | tuple[float, float]] = {}
    for key, value in items:
        level, bound = _level(key), _bound(value, outside)
        if level is not None and bound is not None:
            out[level] = bound
    return out


def thresholds(raw: Any, default_quantity: str, owner: str) -> tuple[ThresholdOverride, ...]:
    """Assets' threshold overrides; entries that do not validate are logged and left out."""
    out: list[ThresholdOverride] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        measure = _enum_name(item.get("measure") or "value", "MEASURE_") or "value"
        direction = _enum_name(item.get("direction") or "above", "DIRECTION_")
        quantity = str(item.get("quantity") or default_quantity)
        try:
            levels = _levels(item.get("levels"), direction == "outside")
            rule = ThresholdRule(direction=direction, levels=levels)  # type: ignore[arg-type]
        except ValidationError as exc:
            log.warning("ignoring thresholds of %s: %s", owner, exc.errors()[0]["msg"])
            continue
        out.append(ThresholdOverride(quantity=quantity, measure=measure, rule=rule))
    return tuple(out)


def sensor_context(doc: dict[str, Any]) -> SensorContext:
    windows = []
    for w in doc.get("windows") or []:
        if isinstance(w, dict):
            start, end = _float(w.get("start_ms")), _float(w.get("end_ms"))
            if start is not None and end is not None:
                windows.append(
                    Window(kind=_enum_name(w.get("kind"), "WINDOW_KIND_"), start_ms=int(start), end_ms=int(end))
                )
    quantity = _shared(doc.get("quantity", ""))
    return SensorContext(
        sensor_id=str(doc.get("sensor_id", "")),
        quantity=quantity,
        facility_code=_shared(doc.get("facility_code", "")),
        region=_shared(doc.get("region", "")),
        active=not is_retired(doc),
        setpoint=_float(doc.get("setpoint")),
        baseline=_float(doc.get("baseline")),
        windows=tuple(windows),
        thresholds=thresholds(doc.get("thresholds"), quantity, f"sensor {doc.get('sensor_id')}"),
    )


def facility_context(doc: dict[str, Any]) -> FacilityContext:
    return FacilityContext(
        code=_shared(doc.get("code", "")),
        kind=_enum_name(doc.get("kind"), "FACILITY_KIND_"),
        region=_shared(doc.get("region", "")),
        unit_id=_shared(doc.get("unit_id", "")),
        thresholds=thresholds(doc.get("thresholds"), "", f"facility {doc.get('code')}"),
    )
