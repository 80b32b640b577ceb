"""Spatial queries over the census: by box, by distance, nearest, near a risk source, along a network path.

Every query lets the database pick candidates by bounding box (PostGIS GiST / SQLite R*Tree) and then
measures exactly with ``geo`` — one Python function for both databases, so their answers are the same.
Scope is the caller's region, as for every read of assets; retired entities are left out unless asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lifeline.kit import i18n
from lifeline.kit.api import invalid_field, require_any_role, scope_prefix
from lifeline.kit.audit import audit, is_cross_region
from lifeline.kit.auth import Principal
from lifeline.kit.db import Database
from lifeline.kit.problems import ProblemError

from ..service import MAX_DEPTH, READER_ROLES, AssetsService, check_position
from . import geo, repository

ENTITIES = ("facility", "sensor", "risk")
MAX_DISTANCE_M = 100_000.0
MAX_K = 100
MAX_RESULTS = 1000
# Nearest-k widens its search circle from here, four times each round, until k are inside it.
_FIRST_RADIUS_M = 1_000.0
_WHOLE_EARTH_M = math.pi * geo.EARTH_RADIUS_M

i18n.register(
    {
        "spatial.bad_bbox": {
            "zh-CN": "bbox 须为“最小经度,最小纬度,最大经度,最大纬度”四个数",
            "en": "bbox must be four numbers: min_lon,min_lat,max_lon,max_lat",
        },
        "spatial.bbox_inverted": {
            "zh-CN": "bbox 的最小值大于最大值（经度 {min_lon} > {max_lon} 或纬度 {min_lat} > {max_lat}）",
            "en": "bbox minimum exceeds its maximum (lon {min_lon} > {max_lon} or lat {min_lat} > {max_lat})",
        },
        "spatial.bad_point": {
            "zh-CN": "{param} 须为“经度,纬度”两个数",
            "en": "{param} must be two numbers: lon,lat",
        },
        "spatial.bad_distance": {
            "zh-CN": "{param} 须在 {interval} 米范围内",
            "en": "{param} must lie in {interval} metres",
        },
        "spatial.bad_count": {"zh-CN": "{param} 须在 1 到 {max} 之间", "en": "{param} must be between 1 and {max}"},
        "spatial.bad_entity": {
            "zh-CN": "实体类型 {entity} 无位置可查（可用：{entities}）",
            "en": "entity type {entity} has no location to query (use: {entities})",
        },
        "spatial.where": {
            "zh-CN": "须给出 bbox，或 near 与 radius_m，二者选一",
            "en": "give either bbox, or near with radius_m, not both",
        },
        "spatial.no_path": {
            "zh-CN": "设施 {from_code} 与 {to_code} 之间沿拓扑连接无路径",
            "en": "no path between facilities {from_code} and {to_code} along the topology links",
        },
        "spatial.not_located": {"zh-CN": "{entity} {id} 没有位置", "en": "{entity} {id} has no location"},
    }
)


def check_distance(metres: float, field: str, *, allow_zero: bool = False) -> float:
    low_ok = metres >= 0 if allow_zero else metres > 0
    if not (math.isfinite(metres) and low_ok and metres <= MAX_DISTANCE_M):
        interval = f"{'[' if allow_zero else '('}0, {MAX_DISTANCE_M:.0f}]"
        raise invalid_field(field, "spatial.bad_distance", param=field, interval=interval)
    return float(metres)


def check_count(value: int, field: str, top: int) -> int:
    if not 1 <= value <= top:
        raise invalid_field(field, "spatial.bad_count", param=field, max=top)
    return value


def check_box(box: Sequence[float]) -> geo.Box:
    """A lon/lat box with both corners in range and its minimum below its maximum."""
    min_lon, min_lat = check_position(box[0], box[1], "bbox")
    max_lon, max_lat = check_position(box[2], box[3], "bbox")
    if min_lon > max_lon or min_lat > max_lat:
        raise invalid_field(
            "bbox", "spatial.bbox_inverted", min_lon=min_lon, max_lon=max_lon, min_lat=min_lat, max_lat=max_lat
        )
    return min_lon, min_lat, max_lon, max_lat


@dataclass(frozen=True)
class Filters:
    """What to look for: entity types, kind (facility kind, sensor quantity, hazard), status, region."""

    entities: tuple[str, ...] = ("facility",)
    kind: str | None = None
    status: str | None = None
    region: str | None = None

    def checked(self) -> Filters:
        for entity in self.entities:
            if entity not in ENTITIES:
                raise invalid_field("entity", "spatial.bad_entity", entity=entity, entities=", ".join(ENTITIES))
        return self


@dataclass
class Hit:
    entity: str
    id: str
    region: str
    kind: str
    status: str
    geometry: dict[str, Any]
    distance_m: float | None = None

    @classmethod
    def of(cls, row: Any) -> Hit:
        return cls(row.entity, row.entity_id, row.region, row.kind, row.status, dict(row.geometry))


class SpatialService:
    """Region-scoped spatial reads of the census."""

    def __init__(self, *, db: Database, assets: AssetsService) -> None:
        self.db = db
        self.assets = assets  # its link traversal finds the paths
        self._rtree: bool | None = None

    async def _candidates(
        self,
        session: Any,
        principal: Principal,
        filters: Filters,
        box: geo.Box,
        within: tuple[dict[str, Any], float] | None = None,
    ) -> list[Hit]:
        if self._rtree is None:
            self._rtree = await repository.has_rtree(session=session)
        rows = await repository.candidates(
            session=session,
            box=box,
            region_prefixes=[scope_prefix(principal.region or ""), filters.region or ""],
            entities=filters.entities,
            kind=filters.kind,
            status=filters.status,
            use_rtree=self._rtree,
            within=within,
        )
        return [Hit.of(r) for r in rows]

    async def _near(
        self, session: Any, principal: Principal, filters: Filters, shape: dict[str, Any], metres: float
    ) -> list[Hit]:
        """Everything within `metres` of `shape`, nearest first (ties by entity and id)."""
        box = geo.expand(geo.bbox(shape), metres)
        # PostGIS measures on the spheroid, we on the sphere: its prefilter gets the same margin as the box.
        margin = metres * 1.01 + 50.0
        hits = []
        for hit in await self._candidates(session, principal, filters, box, within=(shape, margin)):
            hit.distance_m = geo.distance_m(shape, hit.geometry)
            if hit.distance_m <= metres:
                hits.append(hit)
        hits.sort(key=lambda h: (h.distance_m, h.entity, h.id))
        return hits

    async def _answer(
        self, session: Any, principal: Principal, hits: list[Hit], limit: int, *, action: str, source: str | None
    ) -> dict[str, Any]:
        """The first `limit` hits with their entities' current docs; cross-region reads audited."""
        shown = hits[:limit]
        docs: dict[tuple[str, str], dict[str, Any]] = {}
        for entity in {h.entity for h in shown}:
            found = await repository.docs(
                session=session, entity=entity, keys=[h.id for h in shown if h.entity == entity]
            )
            docs.update({(entity, k): d for k, d in found.items()})
        _audit_reads(principal, {h.region for h in shown}, action=action, source=source)
        items = [
            {
                "entity": h.entity,
                "id": h.id,
                "region": h.region,
                "kind": h.kind,
                "status": h.status,
                "geometry": h.geometry,
                "distance_m": None if h.distance_m is None else round(h.distance_m, 3),
                "doc": docs.get((h.entity, h.id)),
            }
            for h in shown
        ]
        return {"items": items, "truncated": len(hits) > limit}

    # --- queries -----------------------------------------------------------------------------------

    async def in_bbox(
        self, *, box: Sequence[float], filters: Filters, limit: int, principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Entities touching a lon/lat box, by entity type and id."""
        require_any_role(principal, READER_ROLES)
        query_box = check_box(box)
        filters = filters.checked()
        check_count(limit, "limit", MAX_RESULTS)
        if principal.region is None:
            return {"items": [], "truncated": False}
        async with self.db.transaction(readonly=True) as session:
            candidates = await self._candidates(session, principal, filters, query_box)
            hits = sorted(
                (h for h in candidates if geo.intersects_box(h.geometry, query_box)), key=lambda h: (h.entity, h.id)
            )
            return await self._answer(session, principal, hits, limit, action="spatial.bbox", source=source)

    async def within(
        self,
        *,
        lon: float,
        lat: float,
        radius_m: float,
        filters: Filters,
        limit: int,
        principal: Principal,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Entities within `radius_m` metres of a point, nearest first."""
        require_any_role(principal, READER_ROLES)
        point = {"type": "Point", "coordinates": check_position(lon, lat, "near")}
        radius_m = check_distance(radius_m, "radius_m")
        filters = filters.checked()
        check_count(limit, "limit", MAX_RESULTS)
        if principal.region is None:
            return {"items": [], "truncated": False}
        async with self.db.transaction(readonly=True) as session:
            hits = await self._near(session, principal, filters, point, radius_m)
            return await self._answer(session, principal, hits, limit, action="spatial.within", source=source)

    async def nearest(
        self, *, lon: float, lat: float, k: int, filters: Filters, principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """The k entities nearest to a point, with their distances, nearest first."""
        require_any_role(principal, READER_ROLES)
        point = {"type": "Point", "coordinates": check_position(lon, lat, "lon,lat")}
        check_count(k, "k", MAX_K)
        filters = filters.checked()
        if principal.region is None:
            return {"items": [], "truncated": False}
        async with self.db.transaction(readonly=True) as session:
            # Once k lie within r, nothing outside r can be nearer: the k nearest inside are the answer.
            radius = _FIRST_RADIUS_M
            while True:
                hits = await self._near(session, principal, filters, point, radius)
                if len(hits) >= k or radius >= _WHOLE_EARTH_M:
                    break
                radius *= 4
            answer = await self._answer(session, principal, hits, k, action="spatial.nearest", source=source)
        answer["truncated"] = False  # k is what was asked for, not a cut
        return answer

    async def near_risk(
        self,
        *,
        risk_id: str,
        distance_m: float,
        filters: Filters,
        limit: int,
        principal: Principal,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Entities (facilities by default) within `distance_m` of a risk source's location, nearest first."""
        require_any_role(principal, READER_ROLES)
        distance_m = check_distance(distance_m, "distance_m", allow_zero=True)
        filters = filters.checked()
        check_count(limit, "limit", MAX_RESULTS)
        async with self.db.transaction(readonly=True) as session:
            row = await repository.indexed(session=session, entity="risk", entity_id=risk_id)
            if row is None:
                raise ProblemError(404, detail="assets.not_found", params={"entity": "risk", "id": risk_id})
            AssetsService._visible(row.region, principal, action="risk.read", resource=f"risk/{risk_id}", source=source)
            hits = await self._near(session, principal, filters, dict(row.geometry), distance_m)
            hits = [h for h in hits if (h.entity, h.id) != ("risk", risk_id)]
            return await self._answer(session, principal, hits, limit, action="spatial.near_risk", source=source)

    async def sensors_along(
        self,
        *,
        from_code: str,
        to_code: str,
        quantity: str | None,
        status: str | None,
        principal: Principal,
        source: str | None = None,
    ) -> dict[str, Any]:
        """The facilities on the shortest path of links between two facilities, and their sensors in order.

        The path (``AssetsService.traverse``, up to its depth limit) follows the links downstream from
        `from_code`; if `to_code` is upstream of it instead, it follows them upstream. Sensors come in the
        order met walking the path, each with its distance along the path (line facilities are walked from
        the end that meets the previous one).
        """
        require_any_role(principal, READER_ROLES)
        async with self.db.transaction(readonly=True) as session:
            ends = await repository.docs(session=session, entity="facility", keys=[from_code, to_code])
        for code in (from_code, to_code):
            if code not in ends:
                raise ProblemError(404, detail="assets.not_found", params={"entity": "facility", "id": code})
            AssetsService._visible(
                ends[code]["region"], principal, action="facility.read", resource=f"facility/{code}", source=source
            )
        direction, path = "downstream", [from_code]
        if from_code != to_code:
            for direction in ("downstream", "upstream"):
                walk = await self.assets.traverse(
                    code=from_code,
                    downstream=direction == "downstream",
                    principal=principal,
                    max_depth=MAX_DEPTH,
                    source=source,
                )
                path = next((f["path"] for f in walk["facilities"] if f["code"] == to_code), [])
                if path:
                    break
            else:
                raise ProblemError(404, detail="spatial.no_path", params={"from_code": from_code, "to_code": to_code})
        async with self.db.transaction(readonly=True) as session:
            found = await repository.docs(session=session, entity="facility", keys=path)
            facilities = [found[c] for c in path if c in found]
            sensors = await repository.sensors_of(
                session=session, facility_codes=[f["code"] for f in facilities], quantity=quantity, status=status
            )
        legs = _legs(facilities)
        placed = []
        for sensor in sensors:
            leg = legs[sensor["facility_code"]]
            pos = sensor["position"]
            along = geo.along_m(leg["geometry"], [pos["lon"], pos["lat"]])
            if leg["reversed"]:
                along = leg["length_m"] - along
            placed.append((leg["index"], along, sensor["sensor_id"], leg["start_m"] + along, sensor))
        placed.sort(key=lambda p: p[:3])
        _audit_reads(principal, {f["region"] for f in facilities}, action="spatial.path", source=source)
        return {
            "from_code": from_code,
            "to_code": to_code,
            "direction": direction,
            "path": [{k: leg[k] for k in ("code", "kind", "name", "start_m", "length_m")} for leg in legs.values()],
            "sensors": [
                {"along_m": round(total, 3), "facility_code": s["facility_code"], "sensor": s}
                for _, _, _, total, s in placed
            ],
        }


def _audit_reads(principal: Principal, regions: set[str], *, action: str, source: str | None) -> None:
    """Reads reaching beyond the caller's own region code are audited, as every read of assets."""
    if any(is_cross_region(principal, r) for r in regions):
        audit(
            principal=principal,
            action=action,
            resource="spatial",
            region=principal.region,
            source=source,
            regions=sorted(regions),
        )


def _legs(facilities: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each facility of a path with where it starts along the path, its length and which way it is walked."""
    legs: dict[str, dict[str, Any]] = {}
    walked = 0.0
    for i, facility in enumerate(facilities):
        geometry = facility["geometry"]
        reverse = False
        if geometry["type"] == "LineString":
            first = {"type": "Point", "coordinates": geometry["coordinates"][0]}
            last = {"type": "Point", "coordinates": geometry["coordinates"][-1]}
            if i > 0:  # enter at the end nearer the previous facility
                prev = facilities[i - 1]["geometry"]
                reverse = geo.distance_m(last, prev) < geo.distance_m(first, prev)
            elif i + 1 < len(facilities):  # leave at the end nearer the next one
                nxt = facilities[i + 1]["geometry"]
                reverse = geo.distance_m(first, nxt) < geo.distance_m(last, nxt)
        length = geo.length_m(geometry)
        legs[facility["code"]] = {
            "index": i,
            "code": facility["code"],
            "kind": facility["kind"],
            "name": facility["name"],
            "geometry": geometry,
            "reversed": reverse,
            "start_m": round(walked, 3),
            "length_m": round(length, 3),
        }
        walked += length
    return legs
