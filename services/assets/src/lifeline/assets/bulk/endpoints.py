"""REST edge of bulk import and export: the body streams in, the file streams out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from lifeline.kit.api import client_address
from lifeline.kit.auth import PrincipalDep
from lifeline.kit.problems import ProblemError

from .formats import (
    GEOJSON_HEAD,
    GEOJSON_TAIL,
    csv_columns,
    csv_line,
    csv_records,
    geojson_feature,
    geojson_records,
    structured_fields,
)
from .service import SHAPES, BulkService

router = APIRouter(prefix="/v1", tags=["assets bulk"])

Entity = Literal["facility", "sensor", "unit", "risk", "link"]
GEOJSON_TYPES = ("application/geo+json", "application/json")
CSV_TYPES = ("text/csv", "application/csv")


async def get_bulk(request: Request) -> BulkService:
    return BulkService(request.app.state.assets)


BulkDep = Annotated[BulkService, Depends(get_bulk)]
RegionPrefix = Annotated[str | None, Query(pattern=r"^\d{1,6}$", description="Region code prefix, e.g. 3401")]
Text = Annotated[str | None, Query(alias="q", max_length=100, description="Part of the name or code")]

IMPORT_DOC = """Import a GeoJSON FeatureCollection (`application/geo+json`) or CSV (`text/csv`) file as a whole.

All records are checked before anything is kept: one bad record and nothing is imported (422, each bad
record named with its field: `features[i].properties.name`, `lines[n].lon`). Records equal to what is
stored change nothing; changed ones get a new version with the reason `import <name>`. CSV: a header
line, `geometry` as WKT or `lon`/`lat` columns, JSON text for structured fields; an export's CSV is a
valid import."""


@router.post(
    "/import/{entity}",
    summary="Import a file of facilities, sensors, units, risk sources or links",
    description=IMPORT_DOC,
)
async def import_entities(
    request: Request,
    entity: Entity,
    principal: PrincipalDep,
    bulk: BulkDep,
    dry_run: Annotated[bool, Query(description="Check and count only; write nothing")] = False,
    name: Annotated[str | None, Query(max_length=200, description="File name for the history's reason")] = None,
) -> dict[str, Any]:
    shape = SHAPES[entity]
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in GEOJSON_TYPES:
        records = geojson_records(request.stream(), shape.geometry_field, shape.derived)
    elif media in CSV_TYPES:
        json_fields = structured_fields(shape.public)
        records = csv_records(request.stream(), shape.geometry_field, json_fields, shape.derived)
    else:
        raise ProblemError(415, detail="assets.bulk.media_type", params={"type": media or "-"})
    return await bulk.import_records(
        entity=entity,
        records=records,
        principal=principal,
        name=name or f"{entity}.{'csv' if media in CSV_TYPES else 'geojson'}",
        dry_run=dry_run,
        source=client_address(request),
    )


@router.get("/export/{entity}", summary="Export one kind of entity as GeoJSON or CSV")
async def export_entities(
    request: Request,
    entity: Entity,
    principal: PrincipalDep,
    bulk: BulkDep,
    fmt: Annotated[Literal["geojson", "csv"], Query(alias="format")] = "geojson",
    kind: str | None = None,
    status: str | None = None,
    facility_code: str | None = None,
    quantity: str | None = None,
    hazard: str | None = None,
    grade: str | None = None,
    region: RegionPrefix = None,
    q: Text = None,
) -> StreamingResponse:
    shape = SHAPES[entity]
    given = {
        "kind": kind,
        "status": status,
        "facility_code": facility_code,
        "quantity": quantity,
        "hazard": hazard,
        "grade": grade,
    }
    pages = bulk.export_pages(
        entity=entity,
        principal=principal,
        equals={f: given[f] for f in shape.filters},
        region_prefix=region,
        text=q,
        source=client_address(request),
    )
    # The first page before the response starts: a refusal is still a problem response, not a cut file.
    first = await anext(pages)

    async def body() -> AsyncIterator[bytes]:
        if fmt == "csv":
            columns = csv_columns(shape.public, shape.geometry_field)
            yield (",".join(columns) + "\n").encode()
            async for docs in _chain(first, pages):
                yield "".join(csv_line(d, columns, shape.geometry_field) for d in docs).encode()
            return
        yield GEOJSON_HEAD
        sep = b""
        async for docs in _chain(first, pages):
            if docs:
                yield sep + b",\n".join(geojson_feature(d, shape.key, shape.geometry_field) for d in docs)
                sep = b",\n"
        yield GEOJSON_TAIL

    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/geo+json"
    filename = f"{entity}.{'csv' if fmt == 'csv' else 'geojson'}"
    return StreamingResponse(
        body(), media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


async def _chain(first: list[dict[str, Any]], rest: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[Any]:
    yield first
    async for docs in rest:
        yield docs
