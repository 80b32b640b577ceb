"""The assets entities as protobuf messages (events and gRPC) and as the kit's SensorSpec."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from lifeline.kit.catalogue import SensorSpec
from lifeline.v1 import assets_pb2 as A

CHANGE = {"created": A.CHANGE_KIND_CREATED, "updated": A.CHANGE_KIND_UPDATED, "retired": A.CHANGE_KIND_RETIRED}
KIND = {name.removeprefix("FACILITY_KIND_").lower(): v for name, v in A.FacilityKind.items() if v}
KIND_NAME = {v: k for k, v in KIND.items()}
FACILITY_STATUS = {name.removeprefix("FACILITY_STATUS_").lower(): v for name, v in A.FacilityStatus.items() if v}
FACILITY_STATUS_NAME = {v: k for k, v in FACILITY_STATUS.items()}
SENSOR_STATUS = {"active": A.ASSET_SENSOR_STATUS_ACTIVE, "retired": A.ASSET_SENSOR_STATUS_RETIRED}
SENSOR_STATUS_NAME = {v: k for k, v in SENSOR_STATUS.items()}
GEOMETRY = {"Point": A.GEOMETRY_TYPE_POINT, "LineString": A.GEOMETRY_TYPE_LINE_STRING}


def positions(geometry: dict[str, Any]) -> list[list[float]]:
    """The coordinates of a (validated) geometry as a list of [lon, lat]."""
    coords = geometry["coordinates"]
    return [coords] if geometry["type"] == "Point" else list(coords)


def facility_proto(doc: dict[str, Any]) -> A.Facility:
    attributes = struct_pb2.Struct()
    json_format.ParseDict(doc["attributes"], attributes)
    geometry = doc["geometry"]
    return A.Facility(
        code=doc["code"],
        kind=KIND[doc["kind"]],
        name=doc["name"],
        region=doc["region"],
        geometry=A.Geometry(
            type=GEOMETRY[geometry["type"]],
            coordinates=[A.LonLat(lon=p[0], lat=p[1]) for p in positions(geometry)],
        ),
        attributes=attributes,
        unit_id=doc.get("unit_id") or "",
        status=FACILITY_STATUS[doc["status"]],
        version=doc["version"],
        updated_ms=doc["updated_ms"],
    )


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
    return msg


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


def change_event(entity: str, change: str, doc: dict[str, Any], actor: str, reason: str | None) -> Any:
    """The change event of one entity version."""
    common = {"change": CHANGE[change], "actor": actor, "reason": reason or ""}
    if entity == "facility":
        return A.FacilityChanged(facility=facility_proto(doc), **common)
    if entity == "sensor":
        return A.SensorChanged(sensor=sensor_proto(doc), **common)
    return A.UnitChanged(unit=unit_proto(doc), **common)
