"""Assets logic: the census of facilities, sensors and responsible units, every change versioned.

Each write checks its input and the caller's region, then in one transaction replaces the entity's
current state, records the version in the history and puts the change event in the outbox, so the
event goes out if and only if the change is kept. The transactions are the edges' (see ``Database``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from lifeline.kit import i18n
from lifeline.kit.api import (
    decode_page_token,
    encode_page_token,
    invalid_field,
    require_any_role,
    require_visible,
    scope_prefix,
)
from lifeline.kit.audit import audit, is_cross_region
from lifeline.kit.auth import Principal
from lifeline.kit.catalogue import Direction, Measure, Quantity, QuantityCatalogue, ThresholdRule, region_contains
from lifeline.kit.db import Database
from lifeline.kit.outbox import enqueue
from lifeline.kit.problems import ProblemError

from . import repository
from .census import change_events
from .messages import positions, sensor_spec
from .spatial.index import index_entity

WRITER_ROLES = ("admin", "operator", "service")
READER_ROLES = ("viewer", "partner", *WRITER_ROLES)
MAX_PAGE = 1000
MAX_DEPTH = 50
# Update fields that are operations on a list rather than new values of a field of the doc.
_LIST_OPS = ("add_windows", "remove_windows")
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
        "assets.unknown_facility": {"zh-CN": "设施 {code} 不存在", "en": "facility {code} does not exist"},
        "assets.self_link": {
            "zh-CN": "连接的上下游不能是同一设施 {code}",
            "en": "a link cannot connect facility {code} to itself",
        },
        "assets.duplicate_link": {
            "zh-CN": "{from_code} → {to_code} 已有在用的 {kind} 连接 {id}",
            "en": "an active {kind} link {id} from {from_code} to {to_code} already exists",
        },
        "assets.has_active_links": {
            "zh-CN": "设施 {id} 仍有 {count} 条在用连接，请先停用连接",
            "en": "facility {id} still has {count} active links; retire them first",
        },
        "assets.bad_depth": {"zh-CN": "depth 须在 1 到 {max} 之间", "en": "depth must be between 1 and {max}"},
        "assets.threshold_rule": {
            "zh-CN": "监测量 {quantity} 没有 {measure}/{direction} 的阈值规则（可用：{rules}）",
            "en": "quantity {quantity} has no {measure}/{direction} threshold rule (available: {rules})",
        },
        "assets.threshold_twice": {
            "zh-CN": "{quantity} 的 {measure}/{direction} 阈值重复",
            "en": "{quantity} {measure}/{direction} thresholds given twice",
        },
        "assets.bad_threshold": {"zh-CN": "阈值无效：{why}", "en": "invalid thresholds: {why}"},
        "assets.threshold_range": {
            "zh-CN": "阈值 {value} 超出 {quantity} 的量程 {low}–{high}（{unit}）",
            "en": "threshold {value} is outside the range {low}–{high} of {quantity} ({unit})",
        },
        "assets.value_range": {
            "zh-CN": "{value} 超出 {quantity} 的量程 {low}–{high}（{unit}）",
            "en": "{value} is outside the range {low}–{high} of {quantity} ({unit})",
        },
        "assets.bad_window": {"zh-CN": "时间窗的开始须早于结束", "en": "a window must start before it ends"},
        "assets.no_window": {
            "zh-CN": "没有 {start_ms}–{end_ms} 的 {kind} 时间窗",
            "en": "there is no {kind} window {start_ms}–{end_ms}",
        },
        "assets.deadline_required": {
            "zh-CN": "整改状态为 {status} 时须给出整改期限",
            "en": "a rectification that is {status} needs a deadline",
        },
        "assets.entity.facility": {"zh-CN": "设施", "en": "facility"},
        "assets.entity.sensor": {"zh-CN": "传感器", "en": "sensor"},
        "assets.entity.unit": {"zh-CN": "责任单位", "en": "responsible unit"},
        "assets.entity.risk": {"zh-CN": "风险源", "en": "risk source"},
        "assets.entity.link": {"zh-CN": "管网连接", "en": "network link"},
    }
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_position(lon: Any, lat: Any, field: str) -> list[float]:
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lon, lat))
    if not ok or not (LON_RANGE[0] <= lon <= LON_RANGE[1] and LAT_RANGE[0] <= lat <= LAT_RANGE[1]):
        raise invalid_field(
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
            raise invalid_field("geometry.coordinates", "assets.geometry_point")
        return {"type": kind, "coordinates": check_position(*coords, "geometry.coordinates")}
    if not isinstance(coords, list) or len(coords) < 2 or not all(pair(p) for p in coords):
        raise invalid_field("geometry.coordinates", "assets.geometry_line")
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
            raise invalid_field("region", "assets.outside_instance", region=region, instance=self.region)
        self._visible(region, principal, action=action, resource=resource, source=source)

    @staticmethod
    def _visible(region: str, principal: Principal, *, action: str, resource: str, source: str | None) -> None:
        require_visible(principal, region, detail="assets.forbidden", action=action, resource=resource, source=source)

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
        await index_entity(session=session, entity=entity, doc=after)
        for subject, payload, event_id in change_events(entity, key, change, after, principal.subject, reason):
            enqueue(session, subject=subject, payload=payload, event_id=event_id)
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
            raise invalid_field("unit_id", "assets.unknown_unit", id=unit_id)

    async def _refuse_if_used(self, session: Any, code: str) -> None:
        """A facility is retired after the sensors on it and the links to it, never leaving them dangling."""
        for entity, columns, key in (
            ("sensor", ("facility_code",), "assets.has_active_sensors"),
            ("link", ("from_code", "to_code"), "assets.has_active_links"),
        ):
            count = await repository.count_active(session=session, entity=entity, columns=columns, value=code)
            if count:
                raise ProblemError(409, detail=key, params={"id": code, "count": count})

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
            after = {**before, **{k: v for k, v in changes.items() if k not in _LIST_OPS}}
            if retire:
                after["status"] = "retired"
                if entity == "facility":
                    await self._refuse_if_used(session, key)
            else:
                after = await _REFINE[entity](self, session, before, after, changes, principal)
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

    async def create(
        self, *, entity: str, data: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Register a new entity: checked, then version 1 recorded with its event."""
        require_any_role(principal, WRITER_ROLES)
        async with self.db.transaction() as session:
            return await self.create_in(session, entity=entity, data=data, principal=principal, source=source)

    async def create_in(
        self, session: Any, *, entity: str, data: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """``create`` inside the caller's transaction (a bulk import keeps a whole file in one)."""
        require_any_role(principal, WRITER_ROLES)
        key, doc = await _NEW[entity](self, session, data, principal, source)
        doc.update(version=1, updated_ms=now_ms())
        return await self._create(session, entity, key, doc, principal, data.get("reason"), source)

    async def _facilities(
        self, session: Any, codes: list[str], principal: Principal, *, field: str, source: str | None
    ) -> list[dict[str, Any]]:
        """The facilities a new risk source or link names: each must exist (else 422) and be visible (else 403)."""
        docs = []
        for i, code in enumerate(codes):
            row = await repository.get(session=session, entity="facility", key=code)
            if row is None:
                raise invalid_field(field.format(i=i), "assets.unknown_facility", code=code)
            self._visible(row.region, principal, action="facility.read", resource=f"facility/{code}", source=source)
            docs.append(dict(row.doc))
        return docs

    def _checked_thresholds(self, items: list[dict[str, Any]], quantity_code: str | None) -> list[dict[str, Any]]:
        """Overrides of the catalogue's rules: only a measure/direction the catalogue has a rule for (the alerts
        service evaluates nothing else), levels monotonic in the direction, at most one override per rule, and
        value thresholds inside the quantity's physical range (canonical unit). A sensor's are all of its
        `quantity_code`; a facility's each name their quantity (for every sensor of it on the facility)."""
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            where = f"thresholds[{i}]"
            code = quantity_code or item["quantity"]
            if code not in self.catalogue:
                raise invalid_field(f"{where}.quantity", "assets.unknown_quantity", quantity=code)
            quantity = self.catalogue.get(code)
            rules = {(r.measure.value, r.direction.value) for r in quantity.thresholds}
            measure, direction = str(item.get("measure") or "value"), str(item["direction"])
            names = {"quantity": code, "measure": measure, "direction": direction}
            if (measure, direction) not in rules:
                available = ", ".join(sorted(f"{m}/{d}" for m, d in rules)) or "-"
                raise invalid_field(where, "assets.threshold_rule", rules=available, **names)
            if any((o.get("quantity", code), o["measure"], o["direction"]) == (code, measure, direction) for o in out):
                raise invalid_field(where, "assets.threshold_twice", **names)
            try:
                rule = ThresholdRule(measure=Measure(measure), direction=Direction(direction), levels=item["levels"])
            except ValidationError as exc:
                why = "; ".join(e["msg"] for e in exc.errors())
                raise invalid_field(f"{where}.levels", "assets.bad_threshold", why=why) from exc
            levels = {level.value: list(v) if isinstance(v, tuple) else v for level, v in rule.ordered()}
            if rule.measure is Measure.VALUE:
                for v in (x for limit in levels.values() for x in (limit if isinstance(limit, list) else [limit])):
                    self._in_range(quantity, v, f"{where}.levels", "assets.threshold_range")
            checked = {"measure": measure, "direction": direction, "levels": levels}
            out.append(checked if quantity_code else {"quantity": code, **checked})
        return out

    @staticmethod
    def _in_range(quantity: Quantity, value: float, field: str, key: str = "assets.value_range") -> None:
        low, high = quantity.range
        if not low <= value <= high:
            raise invalid_field(field, key, value=value, quantity=quantity.code, low=low, high=high, unit=quantity.unit)

    # --- facilities ------------------------------------------------------------------------------------

    async def _new_facility(
        self, session: Any, data: dict[str, Any], principal: Principal, source: str | None
    ) -> tuple[str, dict[str, Any]]:
        """A facility's region is the first six digits of its code."""
        code = data["code"]
        if not _CODE_RE.match(code):
            raise invalid_field("code", "assets.bad_code", code=code)
        region = code[:6]
        self._check_region(region, principal, action="facility.write", resource=f"facility/{code}", source=source)
        doc = {
            "code": code,
            "kind": str(data["kind"]),
            "name": data["name"],
            "region": region,
            "geometry": check_geometry(data["geometry"]),
            "attributes": data.get("attributes") or {},
            "unit_id": data.get("unit_id"),
            "status": data.get("status") or "in_service",
            "thresholds": self._checked_thresholds(data.get("thresholds") or [], None),
        }
        await self._unit_exists(session, doc["unit_id"])
        return code, doc

    async def _refine_facility(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        if "geometry" in changes:
            after["geometry"] = check_geometry(changes["geometry"])
        if "kind" in changes:
            after["kind"] = str(changes["kind"])
        if "thresholds" in changes:
            after["thresholds"] = self._checked_thresholds(changes["thresholds"] or [], None)
        if changes.get("unit_id") != before.get("unit_id"):
            await self._unit_exists(session, after.get("unit_id"))
        return after

    # --- sensors ---------------------------------------------------------------------------------------

    def _checked_sensor(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Quantity known, unit accepted, the rest consistent as the kit's SensorSpec understands it."""
        if doc["quantity"] not in self.catalogue:
            raise invalid_field("quantity", "assets.unknown_quantity", quantity=doc["quantity"])
        quantity = self.catalogue.get(doc["quantity"])
        doc["unit"] = doc.get("unit") or quantity.unit
        doc["interval_s"] = doc.get("interval_s") or quantity.interval_s
        if not quantity.accepts(doc["unit"]):
            raise invalid_field(
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
            raise invalid_field("sensor", "assets.bad_sensor", why=why) from exc
        doc["unit"] = spec.unit
        doc["thresholds"] = self._checked_thresholds(doc.get("thresholds") or [], quantity.code)
        for name in ("setpoint", "baseline"):
            doc[name] = doc.get(name)
            if doc[name] is not None:
                self._in_range(quantity, doc[name], name)
        doc["windows"] = self._checked_windows(doc.get("windows") or [], "windows")
        return doc

    @staticmethod
    def _checked_windows(windows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
        out = []
        for i, w in enumerate(windows):
            if not w["start_ms"] < w["end_ms"]:
                raise invalid_field(f"{field}[{i}]", "assets.bad_window")
            out.append({"kind": w["kind"], "start_ms": w["start_ms"], "end_ms": w["end_ms"], "note": w.get("note", "")})
        return sorted(out, key=lambda w: (w["start_ms"], w["end_ms"], w["kind"]))

    async def _new_sensor(
        self, session: Any, data: dict[str, Any], principal: Principal, source: str | None
    ) -> tuple[str, dict[str, Any]]:
        """A sensor on an existing facility; region and default position come from the facility."""
        facility = await self._current(
            session, "facility", data["facility_code"], principal, action="sensor.write", source=source
        )
        if facility["status"] == "retired":
            raise ProblemError(409, detail="assets.retired", params={"entity": "facility", "id": facility["code"]})
        first = positions(facility["geometry"])[0]
        doc = self._checked_sensor(
            {
                "sensor_id": data["sensor_id"],
                "facility_code": facility["code"],
                "quantity": data["quantity"],
                "unit": data.get("unit"),
                "region": facility["region"],
                "interval_s": data.get("interval_s"),
                "position": data.get("position") or {"lon": first[0], "lat": first[1]},
                "status": "active",
                "range_min": data.get("range_min"),
                "range_max": data.get("range_max"),
                "thresholds": data.get("thresholds") or [],
                "setpoint": data.get("setpoint"),
                "baseline": data.get("baseline"),
                "windows": data.get("windows") or [],
            }
        )
        return data["sensor_id"], doc

    async def _refine_sensor(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        windows = list(after.get("windows") or [])
        for i, w in enumerate(changes.get("remove_windows") or []):
            match = [
                x for x in windows if (x["kind"], x["start_ms"], x["end_ms"]) == (w["kind"], w["start_ms"], w["end_ms"])
            ]
            if not match:
                raise invalid_field(
                    f"remove_windows[{i}]",
                    "assets.no_window",
                    kind=w["kind"],
                    start_ms=w["start_ms"],
                    end_ms=w["end_ms"],
                )
            windows.remove(match[0])
        added = self._checked_windows(changes.get("add_windows") or [], "add_windows")
        after["windows"] = windows + [w for w in added if w not in windows]
        return self._checked_sensor(after)

    # --- responsible units -----------------------------------------------------------------------------

    async def _new_unit(
        self, session: Any, data: dict[str, Any], principal: Principal, source: str | None
    ) -> tuple[str, dict[str, Any]]:
        """A responsible unit (of the caller's region unless another is named)."""
        region = data.get("region") or principal.region or self.region
        if not _REGION_RE.match(region):
            raise invalid_field("region", "assets.bad_region", region=region)
        unit_id = data.get("id") or uuid.uuid4().hex
        self._check_region(region, principal, action="unit.write", resource=f"unit/{unit_id}", source=source)
        doc = {
            "id": unit_id,
            "name": data["name"],
            "region": region,
            "contacts": data.get("contacts") or [],
            "domains": [str(d) for d in data.get("domains") or []],
            "status": "active",
        }
        return unit_id, doc

    async def _refine_unit(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        if "domains" in changes:
            after["domains"] = [str(d) for d in changes["domains"]]
        return after

    # --- risk sources ----------------------------------------------------------------------------------

    async def _new_risk(
        self, session: Any, data: dict[str, Any], principal: Principal, source: str | None
    ) -> tuple[str, dict[str, Any]]:
        """A risk source (风险源): located, graded, tied to the facilities it threatens, with its rectification."""
        risk_id = data.get("id") or uuid.uuid4().hex
        codes = list(dict.fromkeys(data.get("facility_codes") or []))
        facilities = await self._facilities(session, codes, principal, field="facility_codes[{i}]", source=source)
        region = data.get("region") or (facilities[0]["region"] if facilities else None) or principal.region
        region = region or self.region
        if not _REGION_RE.match(region):
            raise invalid_field("region", "assets.bad_region", region=region)
        self._check_region(region, principal, action="risk.write", resource=f"risk/{risk_id}", source=source)
        doc = {
            "id": risk_id,
            "name": data["name"],
            "hazard": data["hazard"],
            "grade": data["grade"],
            "region": region,
            "geometry": check_geometry(data["geometry"]),
            "facility_codes": codes,
            "controls": _controls(data.get("controls") or []),
            "rectification": _rectification(data.get("rectification") or {}),
            "status": "active",
        }
        return risk_id, doc

    async def _refine_risk(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        if "geometry" in changes:
            after["geometry"] = check_geometry(changes["geometry"])
        if "facility_codes" in changes:
            after["facility_codes"] = list(dict.fromkeys(changes["facility_codes"] or []))
            added = [c for c in after["facility_codes"] if c not in before["facility_codes"]]
            await self._facilities(session, added, principal, field="facility_codes", source=None)
        if "controls" in changes:
            after["controls"] = _controls(changes["controls"] or [])
        if "rectification" in changes:
            after["rectification"] = _rectification(changes["rectification"] or {})
        return after

    # --- topology links --------------------------------------------------------------------------------

    async def _link_ends(
        self, session: Any, doc: dict[str, Any], principal: Principal, source: str | None
    ) -> dict[str, Any]:
        """Both ends exist, are visible and in service; not a self-link; no other active link alike.

        Loops are allowed: water and gas networks are meshed (ring mains), so a directed cycle is normal.
        """
        if doc["from_code"] == doc["to_code"]:
            raise invalid_field("to_code", "assets.self_link", code=doc["to_code"])
        for field in ("from_code", "to_code"):
            [end] = await self._facilities(session, [doc[field]], principal, field=field, source=source)
            if end["status"] == "retired":
                raise ProblemError(409, detail="assets.retired", params={"entity": "facility", "id": end["code"]})
        other = await repository.active_link(
            session=session, from_code=doc["from_code"], to_code=doc["to_code"], kind=doc["kind"], other_than=doc["id"]
        )
        if other is not None:
            raise ProblemError(409, detail="assets.duplicate_link", params={**doc, "id": other})
        doc["region"] = doc["from_code"][:6]  # a link belongs to its upstream end
        self._check_region(doc["region"], principal, action="link.write", resource=f"link/{doc['id']}", source=source)
        return doc

    async def _new_link(
        self, session: Any, data: dict[str, Any], principal: Principal, source: str | None
    ) -> tuple[str, dict[str, Any]]:
        """A directed link upstream (from) → downstream (to)."""
        link_id = data.get("id") or uuid.uuid4().hex
        doc = {"id": link_id, "from_code": data["from_code"], "to_code": data["to_code"], "kind": data["kind"]}
        doc = await self._link_ends(session, {**doc, "region": "", "status": "active"}, principal, source)
        return link_id, doc

    async def _refine_link(
        self, session: Any, before: dict[str, Any], after: dict[str, Any], changes: dict[str, Any], principal: Principal
    ) -> dict[str, Any]:
        return await self._link_ends(session, after, principal, None)

    async def traverse(
        self,
        *,
        code: str,
        downstream: bool,
        principal: Principal,
        max_depth: int = 10,
        kinds: Sequence[str] | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Facilities reachable from `code` along active links, breadth first, each once at its shortest depth
        with the path that reaches it. The walk neither reports nor goes through a facility the principal
        cannot see. Loops end because a facility is never visited twice.

        Alerts (inhibiting alerts downstream of a failed segment) and the spatial "sensors along a path" use it.
        """
        require_any_role(principal, READER_ROLES)
        if not 1 <= max_depth <= MAX_DEPTH:
            raise ProblemError(400, detail="assets.bad_depth", params={"max": MAX_DEPTH})
        reached: list[dict[str, Any]] = []
        async with self.db.transaction(readonly=True) as session:
            await self._current(session, "facility", code, principal, action="facility.read", source=source)
            paths: dict[str, tuple[list[str], list[str]]] = {code: ([code], [])}
            frontier = [code]
            depth = 0
            while frontier and depth < max_depth:
                depth += 1
                nxt: list[str] = []
                for link in await self._steps(session, frontier, downstream, kinds):
                    near, far = (link.from_code, link.to_code) if downstream else (link.to_code, link.from_code)
                    if far in paths or not principal.sees(far[:6]):
                        continue
                    path, links = paths[near]
                    paths[far] = ([*path, far], [*links, link.id])
                    reached.append({"code": far, "depth": depth, "path": paths[far][0], "links": paths[far][1]})
                    nxt.append(far)
                frontier = nxt
            beyond = [
                link
                for link in (await self._steps(session, frontier, downstream, kinds) if frontier else [])
                if (link.to_code if downstream else link.from_code) not in paths
            ]
        return {
            "code": code,
            "direction": "downstream" if downstream else "upstream",
            "facilities": reached,
            "truncated": bool(beyond),
        }

    @staticmethod
    async def _steps(session: Any, codes: list[str], downstream: bool, kinds: Sequence[str] | None) -> list[Any]:
        return await repository.active_links_from(
            session=session, codes=sorted(codes), downstream=downstream, kinds=kinds
        )

    # --- any entity ------------------------------------------------------------------------------------

    async def retire(
        self, *, entity: str, key: str, reason: str | None, principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Mark an entity retired (kept, with its history; nothing is deleted)."""
        return await self._update(
            entity=entity, key=key, changes={"reason": reason}, principal=principal, source=source, retire=True
        )

    async def update(
        self, *, entity: str, key: str, changes: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Apply the given fields of an entity (absent ones stay as they were)."""
        return await self._update(entity=entity, key=key, changes=changes, principal=principal, source=source)

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
        equals: dict[str | tuple[str, ...], Any],
        region_prefix: str | None,
        text: str | None,
        limit: int,
        page_token: str | None,
        source: str | None = None,
        contains: dict[str, str | None] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the entities the principal may see, by key, and the token of the next page."""
        require_any_role(principal, READER_ROLES)
        if not 1 <= limit <= MAX_PAGE:
            raise ProblemError(400, detail="assets.bad_limit", params={"max": MAX_PAGE})
        if region_prefix and not region_prefix.isdigit():
            raise invalid_field("region", "assets.bad_region", region=region_prefix)
        if principal.region is None:
            return [], None
        async with self.db.transaction(readonly=True) as session:
            rows = await repository.list_current(
                session=session,
                entity=entity,
                region_prefixes=[scope_prefix(principal.region), region_prefix or ""],
                equals={k: v for k, v in equals.items() if v is not None},
                contains={k: v for k, v in (contains or {}).items() if v is not None},
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


def _controls(items: list[str]) -> list[str]:
    return [c.strip() for c in items if c.strip()]


def _rectification(r: dict[str, Any]) -> dict[str, Any]:
    """Status pending | in_progress | done | overdue, owner, deadline (required until it is done)."""
    out = {"status": r.get("status") or "pending", "owner": r.get("owner") or "", "deadline_ms": r.get("deadline_ms")}
    if out["status"] != "done" and out["deadline_ms"] is None:
        raise invalid_field("rectification.deadline_ms", "assets.deadline_required", status=out["status"])
    return out


_KEY = {"facility": "code", "sensor": "sensor_id", "unit": "id", "risk": "id", "link": "id"}
_TEXT_COLUMNS = {
    "facility": ("name", "code"),
    "sensor": ("sensor_id", "quantity"),
    "unit": ("name", "id"),
    "risk": ("name", "id"),
    "link": ("id",),
}
_FILTER_COLUMNS = {
    "facility": lambda d: {"code": d["code"], "kind": d["kind"], "name": d["name"]},
    "sensor": lambda d: {"sensor_id": d["sensor_id"], "facility_code": d["facility_code"], "quantity": d["quantity"]},
    "unit": lambda d: {"id": d["id"], "name": d["name"]},
    "risk": lambda d: {
        "id": d["id"],
        "name": d["name"],
        "hazard": d["hazard"],
        "grade": d["grade"],
        "facility_codes": "," + "".join(f"{c}," for c in d["facility_codes"]),
    },
    "link": lambda d: {"id": d["id"], "from_code": d["from_code"], "to_code": d["to_code"], "kind": d["kind"]},
}
_NEW = {
    "facility": AssetsService._new_facility,
    "sensor": AssetsService._new_sensor,
    "unit": AssetsService._new_unit,
    "risk": AssetsService._new_risk,
    "link": AssetsService._new_link,
}
_REFINE = {
    "facility": AssetsService._refine_facility,
    "sensor": AssetsService._refine_sensor,
    "unit": AssetsService._refine_unit,
    "risk": AssetsService._refine_risk,
    "link": AssetsService._refine_link,
}
