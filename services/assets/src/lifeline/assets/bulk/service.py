"""Bulk import and export of facilities and sensors.

An import is validated as a whole and applied in one transaction: every record is checked with the
same functions single writes use (code, region and scope, geometry, unit, sensor consistency), written
in chunks through the same versioning, history and outbox path as ``AssetsService._record`` (batched),
and rolled back entirely if any record is wrong, with a report naming each bad record and field. It is
idempotent by key: a record equal to the current state changes nothing; a different one makes a new
version with the reason "import <name>".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError

from lifeline.kit import i18n
from lifeline.kit.api import invalid_field, require_any_role
from lifeline.kit.audit import audit
from lifeline.kit.auth import Principal
from lifeline.kit.outbox import enqueue_many
from lifeline.kit.problems import FieldError, ProblemError, validation_field_errors

from .. import service as assets_service
from ..census import change_events
from ..schemas import (
    ActiveStatus,
    FacilityCreate,
    FacilityPublic,
    FacilityStatus,
    LinkCreate,
    LinkPublic,
    RiskCreate,
    RiskPublic,
    SensorCreate,
    SensorPublic,
    UnitCreate,
    UnitPublic,
)
from ..service import MAX_PAGE, WRITER_ROLES, AssetsService, now_ms
from ..spatial.index import index_entities
from . import repository
from .formats import Record

CHUNK = 1000  # records validated and written per step (memory stays flat however long the file)
MAX_ERRORS = 100  # errors reported; the count of bad records goes on

i18n.register(
    {
        "assets.bulk.rejected": {
            "zh-CN": "导入未执行：{rejected} 条记录有误（共 {total} 条），未写入任何数据",
            "en": "import not applied: {rejected} of {total} records are invalid; nothing was written",
        },
        "assets.bulk.empty": {"zh-CN": "文件中没有记录", "en": "the file holds no records"},
        "assets.bulk.media_type": {
            "zh-CN": "不支持的内容类型 {type}（可用：application/geo+json、text/csv）",
            "en": "unsupported content type {type} (accepted: application/geo+json, text/csv)",
        },
        "assets.bulk.bad_json": {"zh-CN": "GeoJSON 格式错误：{why}", "en": "malformed GeoJSON: {why}"},
        "assets.bulk.not_collection": {
            "zh-CN": "须为 GeoJSON FeatureCollection（收到类型 {type}）",
            "en": "expected a GeoJSON FeatureCollection (got type {type})",
        },
        "assets.bulk.not_feature": {
            "zh-CN": "须为 GeoJSON Feature（含 geometry 与 properties 对象）",
            "en": "expected a GeoJSON Feature (with geometry and properties objects)",
        },
        "assets.bulk.not_utf8": {"zh-CN": "CSV 须为 UTF-8 编码", "en": "CSV must be UTF-8"},
        "assets.bulk.no_header": {"zh-CN": "CSV 缺少表头行", "en": "the CSV has no header line"},
        "assets.bulk.duplicate_columns": {
            "zh-CN": "CSV 表头列重复：{columns}",
            "en": "the CSV header repeats columns: {columns}",
        },
        "assets.bulk.csv_width": {
            "zh-CN": "该行有 {got} 列，表头有 {expected} 列",
            "en": "the line has {got} cells, the header {expected}",
        },
        "assets.bulk.bad_wkt": {
            "zh-CN": "geometry 须为 WKT：POINT (经度 纬度) 或 LINESTRING (经度 纬度, ...)",
            "en": "geometry must be WKT: POINT (lon lat) or LINESTRING (lon lat, ...)",
        },
        "assets.bulk.bad_json_cell": {"zh-CN": "须为 JSON 文本", "en": "must be JSON text"},
        "assets.bulk.bad_lon_lat": {"zh-CN": "lon 与 lat 须同时给出且为数字", "en": "lon and lat must both be numbers"},
        "assets.bulk.duplicate": {
            "zh-CN": "编码 {id} 在文件中重复：{first} 与 {second}",
            "en": "{id} appears twice in the file: {first} and {second}",
        },
        "assets.bulk.immutable": {
            "zh-CN": "{name} 不能通过导入修改（现为 {current}）",
            "en": "{name} cannot change by import (it is {current})",
        },
        "assets.bulk.conflict": {
            "zh-CN": "导入期间有{entity}被他人同时新建，未写入任何数据，请重试",
            "en": "a {entity} was created by someone else during the import; nothing was written, please retry",
        },
        "assets.bulk.key_required": {
            "zh-CN": "导入的每条记录须给出 {name}（重复导入据此识别）",
            "en": "every imported record needs its {name} (how a re-import recognises it)",
        },
        "assets.bulk.no_retire": {
            "zh-CN": "停用须单独操作，不能通过导入",
            "en": "retiring is its own action, not part of an import",
        },
    }
)


class FacilityRecord(FacilityCreate):
    # An export holds retired entities too; importing one unchanged must be accepted (and do nothing).
    status: FacilityStatus = "in_service"


class SensorRecord(SensorCreate):
    status: ActiveStatus = "active"


class UnitRecord(UnitCreate):
    status: ActiveStatus = "active"


class RiskRecord(RiskCreate):
    status: ActiveStatus = "active"


class LinkRecord(LinkCreate):
    status: ActiveStatus = "active"


_ASSIGNED = frozenset({"version", "updated_ms"})
_AND_REGION = _ASSIGNED | {"region"}


@dataclass(frozen=True)
class Shape:
    """How one entity is read from and written to files."""

    entity: str
    key: str
    record: type[BaseModel]
    public: type[BaseModel]
    geometry_field: str | None  # what a feature's geometry is: a facility's geometry, a sensor's position
    filters: tuple[str, ...]  # list filters an export accepts besides region and text
    refers: str  # the field a refusal without a field is about: the entity itself, or what it names
    derived: frozenset[str] = _AND_REGION  # exported, but set by the service on import
    immutable: tuple[str, ...] = ()


SHAPES = {
    "facility": Shape("facility", "code", FacilityRecord, FacilityPublic, "geometry", ("kind", "status"), "code"),
    "sensor": Shape(
        "sensor",
        "sensor_id",
        SensorRecord,
        SensorPublic,
        "position",
        ("facility_code", "quantity", "status"),
        "facility_code",
        immutable=("facility_code", "quantity"),
    ),
    "unit": Shape(
        "unit", "id", UnitRecord, UnitPublic, None, ("status",), "id", derived=_ASSIGNED, immutable=("region",)
    ),
    "risk": Shape(
        "risk",
        "id",
        RiskRecord,
        RiskPublic,
        "geometry",
        ("hazard", "grade", "status"),
        "facility_codes",
        derived=_ASSIGNED,
        immutable=("region",),
    ),
    "link": Shape("link", "id", LinkRecord, LinkPublic, None, ("kind", "status"), "from_code"),
}
_VOLATILE = ("version", "updated_ms")


@dataclass
class _Run:
    shape: Shape
    principal: Principal
    source: str | None
    reason: str
    dry_run: bool
    seen: dict[str, str] = field(default_factory=dict)  # key → where it was first
    errors: list[FieldError] = field(default_factory=list)
    rejected: int = 0
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"created": 0, "updated": 0, "unchanged": 0})

    def reject(self, errors: list[FieldError]) -> None:
        self.rejected += 1
        self.errors += errors[: max(0, MAX_ERRORS - len(self.errors))]


class BulkService:
    """Imports and exports over the assets service's rules and storage."""

    def __init__(self, assets: AssetsService) -> None:
        self.assets = assets

    async def import_records(
        self,
        *,
        entity: str,
        records: AsyncIterator[Record],
        principal: Principal,
        name: str,
        dry_run: bool = False,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Check every record and apply them all, or none (422 listing what is wrong)."""
        require_any_role(principal, WRITER_ROLES)
        run = _Run(SHAPES[entity], principal, source, f"import {name}"[:500], dry_run)
        async with self.assets.db.transaction(readonly=dry_run) as session:
            chunk: list[Record] = []
            async for rec in records:
                chunk.append(rec)
                if len(chunk) >= CHUNK:
                    await self._chunk(session, run, chunk)
                    chunk = []
            await self._chunk(session, run, chunk)
            total = run.total
            if run.rejected:
                raise ProblemError(
                    422,
                    detail="assets.bulk.rejected",
                    params={"rejected": run.rejected, "total": total},
                    errors=run.errors,
                    extensions={
                        "rejected": run.rejected,
                        "total": total,
                        "errors_truncated": run.rejected > MAX_ERRORS,
                    },
                )
            if total == 0:
                raise ProblemError(422, detail="assets.bulk.empty")
        if not dry_run and (run.counts["created"] or run.counts["updated"]):
            audit(
                principal=principal,
                action=f"{entity}.import",
                resource=entity,
                region=principal.region,
                source=source,
                file=name,
                counts=dict(run.counts),
            )
        return {"entity": entity, "name": name, "dry_run": dry_run, "total": total, **run.counts}

    async def _chunk(self, session: Any, run: _Run, chunk: list[Record]) -> None:
        shape = run.shape
        run.total += len(chunk)
        keys = sorted({k for rec in chunk if isinstance(k := rec.fields.get(shape.key), str)})
        currents = await repository.current_docs(
            session=session, entity=shape.entity, keys=keys, lock=not run.dry_run and not run.rejected
        )
        changes: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = []
        for rec in chunk:
            if rec.errors:
                run.reject(rec.errors)
                continue
            key = rec.fields.get(shape.key)
            if isinstance(key, str):
                if key in run.seen:
                    params = {"id": key, "first": run.seen[key], "second": rec.where}
                    field_path = rec.path(shape.key, shape.geometry_field)
                    run.reject([FieldError(field_path, "duplicate", "assets.bulk.duplicate", params)])
                    continue
                run.seen[key] = rec.where
            try:
                change = await self._plan(session, run, rec, currents.get(key) if isinstance(key, str) else None)
            except ValidationError as exc:
                run.reject(_located_validation(rec, exc, shape))
                continue
            except ProblemError as exc:
                run.reject(_located_problem(rec, exc, shape))
                continue
            if change is not None:
                changes.append(change)
        if changes and not run.dry_run and not run.rejected:
            try:
                await record_batch(
                    session, entity=shape.entity, changes=changes, principal=run.principal, reason=run.reason
                )
            except IntegrityError as exc:
                # Someone created one of these keys after this chunk was read: nothing is kept, try again.
                raise ProblemError(409, detail="assets.bulk.conflict", params={"entity": shape.entity}) from exc

    async def _plan(
        self, session: Any, run: _Run, rec: Record, current: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any] | None, dict[str, Any]] | None:
        """The change this record makes (created / updated with before and after), or None if none.

        New entities are made and changed ones refined by the very functions single writes use."""
        shape, principal, source = run.shape, run.principal, run.source
        if shape.key not in rec.fields:  # a generated key would make the same file import twice
            raise invalid_field(shape.key, "assets.bulk.key_required", name=shape.key)
        model = shape.record.model_validate(rec.fields)
        data = model.model_dump(mode="json")
        # The fields the record sets, each whole: a nested object's defaults (a contact without an email)
        # belong to it, as in a single write, or an unchanged record would look changed on re-import.
        given = {name: data[name] for name in model.model_fields_set if name != "reason"}
        key = data[shape.key]
        status = given.get("status")
        if current is None:
            if status == "retired":
                raise invalid_field("status", "assets.bulk.no_retire")
            _, after = await assets_service._NEW[shape.entity](self.assets, session, data, principal, source)
            after.update(version=1, updated_ms=now_ms())
            run.counts["created"] += 1
            return "created", None, after
        action, resource = f"{shape.entity}.write", f"{shape.entity}/{key}"
        self.assets._visible(current["region"], principal, action=action, resource=resource, source=source)
        for name in shape.immutable:
            if given.get(name, current[name]) != current[name]:
                raise invalid_field(name, "assets.bulk.immutable", name=name, current=current[name])
        if status is not None and status != current["status"] and "retired" in (status, current["status"]):
            # Neither retiring nor bringing back a retired entity is an import's business.
            if current["status"] == "retired":
                raise ProblemError(409, detail="assets.retired", params={"entity": shape.entity, "id": key})
            raise invalid_field("status", "assets.bulk.no_retire")
        after = {**current, **given}
        after = await assets_service._REFINE[shape.entity](self.assets, session, current, after, given, principal)
        if _stable(after) == _stable(current):
            run.counts["unchanged"] += 1
            return None
        if current["status"] == "retired":
            raise ProblemError(409, detail="assets.retired", params={"entity": shape.entity, "id": key})
        after["version"] = current["version"] + 1
        after["updated_ms"] = max(now_ms(), current["updated_ms"] + 1)
        run.counts["updated"] += 1
        return "updated", current, after

    async def export_pages(
        self,
        *,
        entity: str,
        principal: Principal,
        equals: dict[str, Any],
        region_prefix: str | None,
        text: str | None,
        source: str | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The entities the principal may see, page by page (the list endpoints' scope and filters)."""
        token: str | None = None
        while True:
            docs, token = await self.assets.page(
                entity=entity,
                principal=principal,
                equals=equals,
                region_prefix=region_prefix,
                text=text,
                limit=MAX_PAGE,
                page_token=token,
                source=source,
            )
            yield docs
            if token is None:
                return


def _stable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _VOLATILE}


def _located_validation(rec: Record, exc: ValidationError, shape: Shape) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors():
        loc = err.get("loc", ())
        prefix = rec.path(str(loc[0]), shape.geometry_field) if loc else rec.where
        out += validation_field_errors([{**err, "loc": loc[1:]}], prefix=prefix)
    return out


def _located_problem(rec: Record, exc: ProblemError, shape: Shape) -> list[FieldError]:
    if exc.errors:
        return [FieldError(rec.path(e.field, shape.geometry_field), e.code, e.reason, e.params) for e in exc.errors]
    # A refusal without a field (not found, retired, forbidden) is about what the record refers to.
    field_path = rec.path(shape.refers, shape.geometry_field)
    return [FieldError(field_path, str(exc.status), exc.detail or exc.title, exc.params)]


async def record_batch(
    session: Any,
    *,
    entity: str,
    changes: list[tuple[str, dict[str, Any] | None, dict[str, Any]]],
    principal: Principal,
    reason: str,
) -> None:
    """``AssetsService._record`` for many changes at once: states, history rows and outbox events, each
    kind of row written with one executemany in the caller's transaction."""
    key = SHAPES[entity].key
    created: list[dict[str, Any]] = []
    updated: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    events: list[tuple[str, Any, str | None]] = []
    for change, before, after in changes:
        columns = {
            "region": after["region"],
            "status": after["status"],
            "version": after["version"],
            "updated_ms": after["updated_ms"],
            "doc": after,
            **assets_service._FILTER_COLUMNS[entity](after),
        }
        (created if before is None else updated).append(columns)
        history.append(
            {
                "entity": entity,
                "entity_id": after[key],
                "version": after["version"],
                "change": change,
                "changed_ms": after["updated_ms"],
                "actor": principal.subject,
                "reason": reason,
                "before": before,
                "after": after,
            }
        )
        events += change_events(entity, after[key], change, after, principal.subject, reason)
    await repository.insert_current_many(session=session, entity=entity, rows=created)
    await repository.update_current_many(session=session, entity=entity, rows=updated)
    await repository.insert_history_many(session=session, rows=history)
    await index_entities(session=session, entity=entity, docs=[after for _, _, after in changes])
    await enqueue_many(session, events)
