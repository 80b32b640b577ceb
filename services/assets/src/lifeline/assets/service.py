"""Assets logic: the census of facilities, sensors and responsible units, every change versioned.

Each write checks its input and the caller's region, then in one transaction replaces the entity's
current state, records the version in the history and puts the change event in the outbox, so the
event goes out if and only if the change is kept. The transactions are the edges' (see ``Database``).
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from lifeline.kit import i18n
from lifeline.kit.api import decode_page_token, encode_page_token, require_any_role
from lifeline.kit.audit import audit, is_cross_region
from lifeline.kit.auth import Principal
from lifeline.kit.catalogue import QuantityCatalogue, region_contains
from lifeline.kit.db import Database
from lifeline.kit.outbox import enqueue
from lifeline.kit.problems import FieldError, ProblemError

from . import repository
from .messages import change_event, positions, sensor_spec

WRITER_ROLES = ("admin", "operator", "service")
READER_ROLES = ("viewer", "partner", *WRITER_ROLES)
MAX_PAGE = 1000
_CODE_RE = re.compile(r"^\d{16}$")
_REGION_RE = re.compile(r"^\d{6}$")
# Mainland China and its seas, generously: a point outside is a typo or swapped lon/lat (117,31 → 31,117),
# not a facility of ours. CGCS2000 and WGS84 agree to well within this.
LON_RANGE = (73.0, 136.0)
LAT_RANGE = (3.0, 54.0)

i18n.register(
    {
        "assets.bad_code": {
            "zh-CN": "设施编码 {code} 须为 16 位数字（6 位行政区划 + 2 位大类 + 2 位小类 + 6 位序号）",
            "en": "facility code {code} must be 16 digits (6 region + 2 major class + 2 minor class + 6 serial)",
        },
        "assets.outside_instance": {
            "zh-CN": "区域 {region} 不属于本实例的区域 {instance}",
            "en": "region {region} is not inside this instance's region {instance}",
        },
        "assets.forbidden": {
            "zh-CN": "无权访问区域 {region} 的资产",
            "en": "not allowed to access assets of region {region}",
        },
        "assets.duplicate": {"zh-CN": "{entity} {id} 已存在", "en": "{entity} {id} already exists"},
        "assets.not_found": {"zh-CN": "{entity} {id} 不存在", "en": "{entity} {id} does not exist"},
        "assets.not_yet": {
            "zh-CN": "{entity} {id} 在该时间尚不存在",
            "en": "{entity} {id} did not exist at that time",
        },
        "assets.retired": {
            "zh-CN": "{entity} {id} 已停用，不能再修改",
            "en": "{entity} {id} is retired and cannot change",
        },
        "assets.conflict": {
            "zh-CN": "{entity} {id} 刚被他人修改，请重新读取后再试",
            "en": "{entity} {id} was changed concurrently; read it again and retry",
        },
        "assets.has_active_sensors": {
            "zh-CN": "设施 {id} 仍有 {count} 个在用传感器，请先停用传感器",
            "en": "facility {id} still has {count} active sensors; retire them first",
        },
        "assets.bad_geometry": {"zh-CN": "几何无效：{why}", "en": "invalid geometry: {why}"},
        "assets.geometry_point": {
            "zh-CN": "Point 的坐标须为 [经度, 纬度]",
            "en": "a Point's coordinates must be [lon, lat]",
        },
        "assets.geometry_line": {
            "zh-CN": "LineString 须有至少两个 [经度, 纬度] 坐标",
            "en": "a LineString needs at least two [lon, lat] positions",
        },
        "assets.geometry_range": {
            "zh-CN": "坐标 [{lon}, {lat}] 超出范围（CGCS2000 经度 {lon_min}–{lon_max}，纬度 {lat_min}–{lat_max}）",
            "en": "position [{lon}, {lat}] is out of range (CGCS2000 lon {lon_min}–{lon_max}, lat {lat_min}–{lat_max})",
        },
        "assets.unknown_unit": {"zh-CN": "责任单位 {id} 不存在", "en": "responsible unit {id} does not exist"},
        "assets.unknown_quantity": {
            "zh-CN": "未知的监测量 {quantity}",
            "en": "unknown quantity {quantity}",
        },
        "assets.bad_sensor_unit": {
            "zh-CN": "监测量 {quantity} 不接受单位 {unit}（可用：{units}）",
            "en": "quantity {quantity} does not accept unit {unit} (accepted: {units})",
        },
        "assets.bad_sensor": {"zh-CN": "传感器参数不一致：{why}", "en": "inconsistent sensor: {why}"},
        "assets.bad_region": {"zh-CN": "区域代码 {region} 须为 6 位数字", "en": "region {region} must be 6 digits"},
        "assets.bad_limit": {"zh-CN": "limit 须在 1 到 {max} 之间", "en": "limit must be between 1 and {max}"},
        "assets.entity.facility": {"zh-CN": "设施", "en": "facility"},
        "assets.entity.sensor": {"zh-CN": "传感器", "en": "sensor"},
        "assets.entity.unit": {"zh-CN": "责任单位", "en": "responsible unit"},
    }
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def scope_prefix(region: str) -> str:
    """The region-code prefix of everything `region` contains (the SQL form of ``region_contains``)."""
    if region == "100000":
        return ""
    if region.endswith("0000"):
        return region[:2]
    if region.endswith("00"):
        return region[:4]
    return region


def _invalid(field: str, key: str, **params: Any) -> ProblemError:
    """422 naming the field; the detail says what is wrong in the caller's language."""
    return ProblemError(422, detail=key, params=params, errors=[FieldError(field, "invalid", key, params)])


def check_position(lon: Any, lat: Any, field: str) -> list[float]:
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lon, lat))
    if not ok or not (LON_RANGE[0] <= lon <= LON_RANGE[1] and LAT_RANGE[0] <= lat <= LAT_RANGE[1]):
        raise _invalid(
            field,
            "assets.geometry_range",
            lon=lon,
            lat=lat,
            lon_min=LON_RANGE[0],
            lon_max=LON_RANGE[1],
            lat_min=LAT_RANGE[0],
            lat_max=LAT_RANGE[1],
        )
    return [float(lon), float(lat)]


def check_geometry(geometry: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON Point or LineString with every position inside the ranges, as plain JSON."""
    kind, coords = geometry["type"], geometry["coordinates"]

    def pair(p: Any) -> bool:
        return isinstance(p, list) and len(p) == 2

    if kind == "Point":
        if not pair(coords):
            raise _invalid("geometry.coordinates", "assets.geometry_point")
        return {"type": kind, "coordinates": check_position(*coords, "geometry.coordinates")}
    if not isinstance(coords, list) or len(coords) < 2 or not all(pair(p) for p in coords):
        raise _invalid("geometry.coordinates", "assets.geometry_line")
    return {
        "type": kind,
        "coordinates": [check_position(*p, f"geometry.coordinates[{i}]") for i, p in enumerate(coords)],
    }


class AssetsService:
    """Writes and region-scoped reads of the census."""

    def __init__(self, *, region: str, catalogue: QuantityCatalogue, db: Database) -> None:
        self.region = region
        self.catalogue = catalogue
        self.db = db

    # --- shared steps --------------------------------------------------------------------------------

    def _check_region(
        self, region: str, principal: Principal, *, action: str, resource: str, source: str | None
    ) -> None:
        """A write's region must be inside this instance (else bad input) and the caller's (else 403)."""
        if not region_contains(self.region, region):
            raise _invalid("region", "assets.outside_instance", region=region, instance=self.region)
        self._visible(region, principal, action=action, resource=resource, source=source)

    @staticmethod
    def _visible(region: str, principal: Principal, *, action: str, resource: str, source: str | None) -> None:
        if principal.region is None or not principal.sees(region):
            audit(
                principal=principal,
                action=action,
                resource=resource,
                region=region,
                source=source,
                outcome="forbidden",
            )
            raise ProblemError(403, detail="assets.forbidden", params={"region": region})

    @staticmethod
    def _not_found(entity: str, key: str, lang_key: str = "assets.not_found") -> ProblemError:
        return ProblemError(404, detail=lang_key, params={"entity": entity, "id": key})

    async def _current(
        self, session: Any, entity: str, key: str, principal: Principal, *, action: str, source: str | None
    ) -> dict[str, Any]:
        row = await repository.get(session=session, entity=entity, key=key)
        if row is None:
            raise self._not_found(entity, key)
        self._visible(row.region, principal, action=action, resource=f"{entity}/{key}", source=source)
        return dict(row.doc)

    async def _create(
        self,
        session: Any,
        entity: str,
        key: str,
        doc: dict[str, Any],
        principal: Principal,
        reason: str | None,
        source: str | None,
    ) -> dict[str, Any]:
        """Record version 1 of a new entity; 409 if the key is taken."""
        if await repository.get(session=session, entity=entity, key=key) is not None:
            raise ProblemError(409, detail="assets.duplicate", params={"entity": entity, "id": key})
        return await self._record(
            session,
            entity=entity,
            key=key,
            change="created",
            before=None,
            after=doc,
            principal=principal,
            reason=reason,
            source=source,
        )

    async def _record(
        self,
        session: Any,
        *,
        entity: str,
        key: str,
        change: str,
        before: dict[str, Any] | None,
        after: dict[str, Any],
        principal: Principal,
        reason: str | None,
        source: str | None,
    ) -> dict[str, Any]:
        """Store the new state, its history row and its event; refuse a concurrent change or duplicate."""
        columns = {
            "region": after["region"],
            "status": after["status"],
            "version": after["version"],
            "updated_ms": after["updated_ms"],
            "doc": after,
        }
        columns.update(_FILTER_COLUMNS[entity](after))
        try:
            if before is None:
                await repository.insert_current(session=session, entity=entity, values=columns)
            elif not await repository.update_current(
                session=session, entity=entity, key=key, expected_version=before["version"], values=columns
            ):
                raise ProblemError(409, detail="assets.conflict", params={"entity": entity, "id": key})
            await repository.insert_history(
                session=session,
                values={
                    "entity": entity,
                    "entity_id": key,
                    "version": after["version"],
                    "change": change,
                    "changed_ms": after["updated_ms"],
                    "actor": principal.subject,
                    "reason": reason,
                    "before": before,
                    "after": after,
                },
            )
        except IntegrityError as exc:
            # Two creations racing past the existence check: the primary key decides.
            code = "assets.duplicate" if before is None else "assets.conflict"
            raise ProblemError(409, detail=code, params={"entity": entity, "id": key}) from exc
        enqueue(
            session,
            subject=f"events.assets.{entity}.{after['region']}",
            payload=change_event(entity, change, after, principal.subject, reason),
            event_id=f"{entity}:{key}:{after['version']}",
        )
        audit(
            principal=principal,
            action=f"{entity}.{change.removesuffix('d')}",
            resource=f"{entity}/{key}",
            region=after["region"],
            source=source,
            version=after["version"],
        )
        return after

    async def _unit_exists(self, session: Any, unit_id: str | None) -> None:
        if unit_id is not None and await repository.get(session=session, entity="unit", key=unit_id) is None:
            raise _invalid("unit_id", "assets.unknown_unit", id=unit_id)

    async def _update(
        self,
        *,
        entity: str,
        key: str,
        changes: dict[str, Any],
        principal: Principal,
        source: str | None,
        retire: bool = False,
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        reason = changes.pop("reason", None)
        async with self.db.transaction() as session:
            before = await self._current(session, entity, key, principal, action=f"{entity}.write", source=source)
            if before["status"] == "retired":
                raise ProblemError(409, detail="assets.retired", params={"entity": entity, "id": key})
            after = {**before, **changes}
            if retire:
                after["status"] = "retired"
                if entity == "facility":
                    count = await repository.count_active_sensors(session=session, facility_code=key)
                    if count:
                        raise ProblemError(409, detail="assets.has_active_sensors", params={"id": key, "count": count})
            else:
                after = await _REFINE[entity](self, session, before, after, changes)
            if after == before:
                return before  # nothing changed: no new version, no event
            after["version"] = before["version"] + 1
            after["updated_ms"] = max(now_ms(), before["updated_ms"] + 1)
            return await self._record(
                session,
                entity=entity,
                key=key,
                change="retired" if retire else "updated",
                before=before,
                after=after,
                principal=principal,
                reason=reason,
                source=source,
            )

    # --- facilities ------------------------------------------------------------------------------------

    async def create_facility(
        self, *, facility_in: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Register a facility; its region is the first six digits of its code."""
        require_any_role(principal, WRITER_ROLES)
        code = facility_in["code"]
        if not _CODE_RE.match(code):
            raise _invalid("code", "assets.bad_code", code=code)
        region = code[:6]
        self._check_region(region, principal, action="facility.write", resource=f"facility/{code}", source=source)
        doc = {
            "code": code,
            "kind": str(facility_in["kind"]),
            "name": facility_in["name"],
            "region": region,
            "geometry": check_geometry(facility_in["geometry"]),
            "attributes": facility_in.get("attributes") or {},
            "unit_id": facility_in.get("unit_id"),
            "status": facility_in.get("status") or "in_service",
            "version": 1,
            "updated_ms": now_ms(),
        }
        async with self.db.transaction() as session:
            await self._unit_exists(session, doc["unit_id"])
            return await self._create(session, "facility", code, doc, principal, facility_in.get("reason"), source)

    async def _refine_facility(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
        if "geometry" in changes:
            after["geometry"] = check_geometry(changes["geometry"])
        if "kind" in changes:
            after["kind"] = str(changes["kind"])
        if changes.get("unit_id") != before.get("unit_id"):
            await self._unit_exists(session, after.get("unit_id"))
        return after

    async def update_facility(
        self, *, code: str, changes: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Apply the given fields (absent ones stay as they were)."""
        return await self._update(entity="facility", key=code, changes=changes, principal=principal, source=source)

    # --- sensors ---------------------------------------------------------------------------------------

    def _checked_sensor(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Quantity known, unit accepted, the rest consistent as the kit's SensorSpec understands it."""
        if doc["quantity"] not in self.catalogue:
            raise _invalid("quantity", "assets.unknown_quantity", quantity=doc["quantity"])
        quantity = self.catalogue.get(doc["quantity"])
        doc["unit"] = doc.get("unit") or quantity.unit
        doc["interval_s"] = doc.get("interval_s") or quantity.interval_s
        if not quantity.accepts(doc["unit"]):
            raise _invalid(
                "unit",
                "assets.bad_sensor_unit",
                quantity=quantity.code,
                unit=doc["unit"],
                units=", ".join(quantity.accepted_units),
            )
        pos = doc["position"]
        doc["position"] = dict(zip(("lon", "lat"), check_position(pos["lon"], pos["lat"], "position"), strict=True))
        try:
            spec = sensor_spec(doc)
        except ValidationError as exc:
            why = "; ".join(e["msg"] for e in exc.errors())
            raise _invalid("sensor", "assets.bad_sensor", why=why) from exc
        doc["unit"] = spec.unit
        return doc

    async def create_sensor(
        self, *, sensor_in: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Register a sensor on an existing facility; region and default position come from the facility."""
        require_any_role(principal, WRITER_ROLES)
        sensor_id = sensor_in["sensor_id"]
        async with self.db.transaction() as session:
            facility = await self._current(
                session, "facility", sensor_in["facility_code"], principal, action="sensor.write", source=source
            )
            if facility["status"] == "retired":
                raise ProblemError(409, detail="assets.retired", params={"entity": "facility", "id": facility["code"]})
            first = positions(facility["geometry"])[0]
            doc = self._checked_sensor(
                {
                    "sensor_id": sensor_id,
                    "facility_code": facility["code"],
                    "quantity": sensor_in["quantity"],
                    "unit": sensor_in.get("unit"),
                    "region": facility["region"],
                    "interval_s": sensor_in.get("interval_s"),
                    "position": sensor_in.get("position") or {"lon": first[0], "lat": first[1]},
                    "status": "active",
                    "range_min": sensor_in.get("range_min"),
                    "range_max": sensor_in.get("range_max"),
                    "version": 1,
                    "updated_ms": now_ms(),
                }
            )
            return await self._create(session, "sensor", sensor_id, doc, principal, sensor_in.get("reason"), source)

    async def _refine_sensor(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
        return self._checked_sensor(after)

    async def update_sensor(
        self, *, sensor_id: str, changes: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        return await self._update(entity="sensor", key=sensor_id, changes=changes, principal=principal, source=source)

    # --- responsible units -----------------------------------------------------------------------------

    async def create_unit(
        self, *, unit_in: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Register a responsible unit (of the caller's region unless another is named)."""
        require_any_role(principal, WRITER_ROLES)
        region = unit_in.get("region") or principal.region or self.region
        if not _REGION_RE.match(region):
            raise _invalid("region", "assets.bad_region", region=region)
        unit_id = unit_in.get("id") or uuid.uuid4().hex
        self._check_region(region, principal, action="unit.write", resource=f"unit/{unit_id}", source=source)
        doc = {
            "id": unit_id,
            "name": unit_in["name"],
            "region": region,
            "contacts": unit_in.get("contacts") or [],
            "domains": [str(d) for d in unit_in.get("domains") or []],
            "status": "active",
            "version": 1,
            "updated_ms": now_ms(),
        }
        async with self.db.transaction() as session:
            return await self._create(session, "unit", unit_id, doc, principal, unit_in.get("reason"), source)

    async def _refine_unit(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
        if "domains" in changes:
            after["domains"] = [str(d) for d in changes["domains"]]
        return after

    async def update_unit(
        self, *, unit_id: str, changes: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        return await self._update(entity="unit", key=unit_id, changes=changes, principal=principal, source=source)

    # --- any entity ------------------------------------------------------------------------------------

    async def retire(
        self, *, entity: str, key: str, reason: str | None, principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Mark an entity retired (kept, with its history; nothing is deleted)."""
        return await self._update(
            entity=entity, key=key, changes={"reason": reason}, principal=principal, source=source, retire=True
        )

    async def get(
        self, *, entity: str, key: str, principal: Principal, as_of_ms: int | None = None, source: str | None = None
    ) -> dict[str, Any]:
        """The current state of an entity, or its state at `as_of_ms`."""
        require_any_role(principal, READER_ROLES)
        async with self.db.transaction(readonly=True) as session:
            doc = await self._current(session, entity, key, principal, action=f"{entity}.read", source=source)
            if as_of_ms is not None:
                past = await repository.version_at(session=session, entity=entity, key=key, at_ms=as_of_ms)
                if past is None:
                    raise self._not_found(entity, key, "assets.not_yet")
                doc = dict(past.after)
        if is_cross_region(principal, doc["region"]):
            audit(
                principal=principal,
                action=f"{entity}.read",
                resource=f"{entity}/{key}",
                region=doc["region"],
                source=source,
            )
        return doc

    async def history(
        self, *, entity: str, key: str, principal: Principal, source: str | None = None
    ) -> list[dict[str, Any]]:
        """Every version of an entity, oldest first."""
        require_any_role(principal, READER_ROLES)
        async with self.db.transaction(readonly=True) as session:
            await self._current(session, entity, key, principal, action=f"{entity}.read", source=source)
            rows = await repository.history(session=session, entity=entity, key=key)
        return [
            {
                "version": r.version,
                "change": r.change,
                "changed_ms": r.changed_ms,
                "changed_at": datetime.fromtimestamp(r.changed_ms / 1000, UTC).isoformat(timespec="milliseconds"),
                "actor": r.actor,
                "reason": r.reason,
                "before": r.before,
                "after": r.after,
            }
            for r in rows
        ]

    async def page(
        self,
        *,
        entity: str,
        principal: Principal,
        equals: dict[str, Any],
        region_prefix: str | None,
        text: str | None,
        limit: int,
        page_token: str | None,
        source: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the entities the principal may see, by key, and the token of the next page."""
        require_any_role(principal, READER_ROLES)
        if not 1 <= limit <= MAX_PAGE:
            raise ProblemError(400, detail="assets.bad_limit", params={"max": MAX_PAGE})
        if region_prefix and not region_prefix.isdigit():
            raise _invalid("region", "assets.bad_region", region=region_prefix)
        if principal.region is None:
            return [], None
        async with self.db.transaction(readonly=True) as session:
            rows = await repository.list_current(
                session=session,
                entity=entity,
                region_prefixes=[scope_prefix(principal.region), region_prefix or ""],
                equals={k: v for k, v in equals.items() if v is not None},
                text=text or None,
                text_columns=_TEXT_COLUMNS[entity],
                after=decode_page_token(page_token) if page_token else None,
                limit=limit + 1,
            )
        docs = [dict(r.doc) for r in rows[:limit]]
        regions = sorted({d["region"] for d in docs})
        if any(is_cross_region(principal, r) for r in regions):
            audit(
                principal=principal,
                action=f"{entity}.list",
                resource=entity,
                region=principal.region,
                source=source,
                regions=regions,
            )
        token = encode_page_token(docs[-1][_KEY[entity]]) if len(rows) > limit else None
        return docs, token


_KEY = {"facility": "code", "sensor": "sensor_id", "unit": "id"}
_TEXT_COLUMNS = {"facility": ("name", "code"), "sensor": ("sensor_id", "quantity"), "unit": ("name", "id")}
_FILTER_COLUMNS = {
    "facility": lambda d: {"code": d["code"], "kind": d["kind"], "name": d["name"]},
    "sensor": lambda d: {"sensor_id": d["sensor_id"], "facility_code": d["facility_code"], "quantity": d["quantity"]},
    "unit": lambda d: {"id": d["id"], "name": d["name"]},
}
_REFINE = {
    "facility": AssetsService._refine_facility,
    "sensor": AssetsService._refine_sensor,
    "unit": AssetsService._refine_unit,
}
