"""The assets entities as protobuf messages (events and gRPC) and as the kit's SensorSpec."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from lifeline.kit.catalogue import SensorSpec
from lifeline.v1 import assets_pb2 as A
from lifeline.v1 import common_pb2 as C

CHANGE = {"created": A.CHANGE_KIND_CREATED, "updated": A.CHANGE_KIND_UPDATED, "retired": A.CHANGE_KIND_RETIRED}
KIND = {name.removeprefix("FACILITY_KIND_").lower(): v for name, v in A.FacilityKind.items() if v}
KIND_NAME = {v: k for k, v in KIND.items()}
FACILITY_STATUS = {name.removeprefix("FACILITY_STATUS_").lower(): v for name, v in A.FacilityStatus.items() if v}
FACILITY_STATUS_NAME = {v: k for k, v in FACILITY_STATUS.items()}
SENSOR_STATUS = {"active": A.ASSET_SENSOR_STATUS_ACTIVE, "retired": A.ASSET_SENSOR_STATUS_RETIRED}
SENSOR_STATUS_NAME = {v: k for k, v in SENSOR_STATUS.items()}
GEOMETRY = {"Point": A.GEOMETRY_TYPE_POINT, "LineString": A.GEOMETRY_TYPE_LINE_STRING}
GEOMETRY_NAME = {v: k for k, v in GEOMETRY.items()}
LEVEL = {
    "I": C.WARNING_LEVEL_I_RED,
    "II": C.WARNING_LEVEL_II_ORANGE,
    "III": C.WARNING_LEVEL_III_YELLOW,
    "IV": C.WARNING_LEVEL_IV_BLUE,
}
LEVEL_NAME = {v: k for k, v in LEVEL.items()}
LINK_KIND = {name.removeprefix("LINK_KIND_").lower(): v for name, v in A.LinkKind.items() if v}
LINK_KIND_NAME = {v: k for k, v in LINK_KIND.items()}


def positions(geometry: dict[str, Any]) -> list[list[float]]:
    """The coordinates of a (validated) geometry as a list of [lon, lat]."""
    coords = geometry["coordinates"]
    return [coords] if geometry["type"] == "Point" else list(coords)


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    json_format.ParseDict(value, out)
    return out


def geometry_proto(geometry: dict[str, Any]) -> A.Geometry:
    return A.Geometry(
        type=GEOMETRY[geometry["type"]],
        coordinates=[A.LonLat(lon=p[0], lat=p[1]) for p in positions(geometry)],
    )


def geometry_doc(msg: A.Geometry) -> dict[str, Any] | None:
    """The GeoJSON of a Geometry message as the REST edge receives it (checked by the service)."""
    if not msg.type:
        return None
    coords = [[p.lon, p.lat] for p in msg.coordinates]
    return {
        "type": GEOMETRY_NAME[msg.type],
        "coordinates": coords[0] if msg.type == A.GEOMETRY_TYPE_POINT and coords else coords,
    }


def threshold_proto(t: dict[str, Any]) -> A.Threshold:
    levels = []
    for level, limit in t["levels"].items():
        if isinstance(limit, list | tuple):
            levels.append(A.ThresholdLevel(level=LEVEL[level], low=limit[0], high=limit[1]))
        else:
            levels.append(A.ThresholdLevel(level=LEVEL[level], value=limit))
    return A.Threshold(quantity=t.get("quantity", ""), measure=t["measure"], direction=t["direction"], levels=levels)


def threshold_doc(msg: A.Threshold, *, with_quantity: bool) -> dict[str, Any]:
    band = msg.direction == "outside"
    doc: dict[str, Any] = {
        "measure": msg.measure or "value",
        "direction": msg.direction,
        "levels": {LEVEL_NAME.get(x.level, str(x.level)): [x.low, x.high] if band else x.value for x in msg.levels},
    }
    return {"quantity": msg.quantity, **doc} if with_quantity else doc


def facility_proto(doc: dict[str, Any]) -> A.Facility:
    return A.Facility(
        code=doc["code"],
        kind=KIND[doc["kind"]],
        name=doc["name"],
        region=doc["region"],
        geometry=geometry_proto(doc["geometry"]),
        attributes=struct(doc["attributes"]),
        unit_id=doc.get("unit_id") or "",
        status=FACILITY_STATUS[doc["status"]],
        version=doc["version"],
        updated_ms=doc["updated_ms"],
        thresholds=[threshold_proto(t) for t in doc.get("thresholds") or []],
    )


def facility_doc(msg: A.Facility) -> dict[str, Any]:
    """A Facility message as the REST edge's JSON (unset enums and strings become None: the default)."""
    return {
        "code": msg.code,
        "kind": KIND_NAME.get(msg.kind),
        "name": msg.name or None,
        "geometry": geometry_doc(msg.geometry),
        "attributes": json_format.MessageToDict(msg.attributes),
        "unit_id": msg.unit_id or None,
        "status": FACILITY_STATUS_NAME.get(msg.status),
        "thresholds": [threshold_doc(t, with_quantity=True) for t in msg.thresholds],
    }


def sensor_spec(doc: dict[str, Any]) -> SensorSpec:
    """The sensor as the kit's value type (what ingest registers); raises ValueError if inconsistent."""
    return SensorSpec(
        sensor_id=doc["sensor_id"],
        quantity=doc["quantity"],
        unit=doc["unit"],
        region=doc["region"],
        facility_code=doc["facility_code"],
        interval_s=doc["interval_s"],
        lat=doc["position"]["lat"],
        lon=doc["position"]["lon"],
        status=doc["status"],
        range_min=doc.get("range_min"),
        range_max=doc.get("range_max"),
    )


def sensor_proto(doc: dict[str, Any]) -> A.AssetSensor:
    spec = sensor_spec(doc)
    msg = A.AssetSensor(
        sensor_id=spec.sensor_id,
        facility_code=spec.facility_code,
        quantity=spec.quantity,
        unit=spec.unit,
        region=spec.region,
        interval_s=spec.interval_s,
        position=A.LonLat(lon=spec.lon, lat=spec.lat),
        status=SENSOR_STATUS[spec.status.value],
        version=doc["version"],
        updated_ms=doc["updated_ms"],
    )
    if spec.range_min is not None and spec.range_max is not None:
        msg.range_min = spec.range_min
        msg.range_max = spec.range_max
    for name in ("setpoint", "baseline"):
        if doc.get(name) is not None:
            setattr(msg, name, doc[name])
    msg.thresholds.extend(threshold_proto(t) for t in doc.get("thresholds") or [])
    msg.windows.extend(A.SensorWindow(**w) for w in doc.get("windows") or [])
    return msg


def window_doc(msg: A.SensorWindow) -> dict[str, Any]:
    return {"kind": msg.kind, "start_ms": msg.start_ms, "end_ms": msg.end_ms, "note": msg.note}


def sensor_doc(msg: A.AssetSensor) -> dict[str, Any]:
    has = msg.HasField
    return {
        "sensor_id": msg.sensor_id,
        "facility_code": msg.facility_code,
        "quantity": msg.quantity,
        "unit": msg.unit or None,
        "interval_s": msg.interval_s or None,
        "position": {"lon": msg.position.lon, "lat": msg.position.lat} if has("position") else None,
        "range_min": msg.range_min if has("range_min") else None,
        "range_max": msg.range_max if has("range_max") else None,
        "thresholds": [threshold_doc(t, with_quantity=False) for t in msg.thresholds],
        "setpoint": msg.setpoint if has("setpoint") else None,
        "baseline": msg.baseline if has("baseline") else None,
        "windows": [window_doc(w) for w in msg.windows],
    }


def unit_proto(doc: dict[str, Any]) -> A.ResponsibleUnit:
    return A.ResponsibleUnit(
        id=doc["id"],
        name=doc["name"],
        region=doc["region"],
        contacts=[A.Contact(**c) for c in doc["contacts"]],
        domains=[KIND[d] for d in doc["domains"]],
        version=doc["version"],
        updated_ms=doc["updated_ms"],
        retired=doc["status"] == "retired",
    )


def unit_doc(msg: A.ResponsibleUnit) -> dict[str, Any]:
    return {
        "id": msg.id or None,
        "name": msg.name or None,
        "region": msg.region or None,
        "contacts": [json_format.MessageToDict(c, preserving_proto_field_name=True) for c in msg.contacts],
        "domains": [KIND_NAME.get(d) for d in msg.domains],
    }


def risk_proto(doc: dict[str, Any]) -> A.RiskSource:
    r = doc["rectification"]
    return A.RiskSource(
        id=doc["id"],
        name=doc["name"],
        hazard=doc["hazard"],
        grade=LEVEL[doc["grade"]],
        region=doc["region"],
        geometry=geometry_proto(doc["geometry"]),
        facility_codes=doc["facility_codes"],
        controls=doc["controls"],
        rectification=A.Rectification(status=r["status"], owner=r["owner"], deadline_ms=r["deadline_ms"] or 0),
        retired=doc["status"] == "retired",
        version=doc["version"],
        updated_ms=doc["updated_ms"],
    )


def risk_doc(msg: A.RiskSource) -> dict[str, Any]:
    r = msg.rectification
    return {
        "id": msg.id or None,
        "name": msg.name or None,
        "hazard": msg.hazard or None,
        "grade": LEVEL_NAME.get(msg.grade),
        "region": msg.region or None,
        "geometry": geometry_doc(msg.geometry),
        "facility_codes": list(msg.facility_codes),
        "controls": list(msg.controls),
        "rectification": {"status": r.status or "pending", "owner": r.owner, "deadline_ms": r.deadline_ms or None},
    }


def link_proto(doc: dict[str, Any]) -> A.Link:
    return A.Link(
        id=doc["id"],
        from_code=doc["from_code"],
        to_code=doc["to_code"],
        kind=LINK_KIND[doc["kind"]],
        region=doc["region"],
        retired=doc["status"] == "retired",
        version=doc["version"],
        updated_ms=doc["updated_ms"],
    )


def link_doc(msg: A.Link) -> dict[str, Any]:
    return {
        "id": msg.id or None,
        "from_code": msg.from_code or None,
        "to_code": msg.to_code or None,
        "kind": LINK_KIND_NAME.get(msg.kind),
    }


# Entity → its message, the change event and that event's field, and the conversions both ways.
PROTO: dict[str, tuple[Any, Any, str, Any, Any]] = {
    "facility": (A.Facility, A.FacilityChanged, "facility", facility_proto, facility_doc),
    "sensor": (A.AssetSensor, A.SensorChanged, "sensor", sensor_proto, sensor_doc),
    "unit": (A.ResponsibleUnit, A.UnitChanged, "unit", unit_proto, unit_doc),
    "risk": (A.RiskSource, A.RiskSourceChanged, "risk", risk_proto, risk_doc),
    "link": (A.Link, A.LinkChanged, "link", link_proto, link_doc),
}


def change_event(entity: str, change: str, doc: dict[str, Any], actor: str, reason: str | None) -> Any:
    """The change event of one entity version."""
    _, event, field, to_proto, _ = PROTO[entity]
    return event(change=CHANGE[change], actor=actor, reason=reason or "", **{field: to_proto(doc)})
