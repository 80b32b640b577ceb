"""GeoJSON FeatureCollections and CSV files, read incrementally and written row by row.

Readers turn a stream of request-body chunks into records (the fields of one feature or CSV line, and
where it came from) without holding the file: ijson parses GeoJSON as the bytes arrive, CSV is cut at
line ends outside quotes. Writers turn entity documents into features or CSV lines, in the shape the
readers accept, so an export imports back unchanged.

CSV: UTF-8 (a BOM is fine), a header line naming the columns, one entity per line. Geometry is WKT in
a ``geometry`` column (``POINT (117.2 31.8)``, ``LINESTRING (117.2 31.8, 117.3 31.9)``) or, for a
point, ``lon`` and ``lat`` columns; structured fields (attributes, thresholds, windows) are JSON text;
an empty cell is an absent field.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

import ijson
from pydantic import BaseModel

from lifeline.kit.problems import FieldError, ProblemError


@dataclass
class Record:
    """One feature or CSV line: its fields, or why it could not be read at all."""

    where: str  # "features[3]" or "lines[4]" (1-based physical line of the file)
    fields: dict[str, Any] = field(default_factory=dict)
    errors: list[FieldError] = field(default_factory=list)
    geojson: bool = False

    def path(self, name: str, geometry_field: str | None) -> str:
        """Where a field of this record is in the file, for the error report."""
        if not self.geojson:
            return f"{self.where}.{name}"
        if (geometry_field and name == geometry_field) or name.startswith((f"{geometry_field}.", f"{geometry_field}[")):
            return f"{self.where}.geometry{name[len(geometry_field) :]}"
        return f"{self.where}.properties.{name}"


def _bad_file(key: str, **params: Any) -> ProblemError:
    return ProblemError(422, detail=key, params=params, errors=[FieldError("body", "malformed", key, params)])


# --- GeoJSON -----------------------------------------------------------------------------------------


async def geojson_records(
    chunks: AsyncIterator[bytes], geometry_field: str | None, derived: frozenset[str]
) -> AsyncIterator[Record]:
    """The features of a FeatureCollection as they arrive; geometry becomes ``geometry_field``.

    A sensor's Point becomes its ``position`` ({lon, lat}); a facility keeps its GeoJSON geometry; an
    entity without a place (unit, link) has none. Properties in ``derived`` are left out.
    """
    features = ijson.sendable_list()
    top_type = ijson.sendable_list()
    parsers = (
        ijson.items_coro(features, "features.item", use_float=True),
        ijson.items_coro(top_type, "type"),
    )
    index = 0
    try:
        async for chunk in chunks:
            if not chunk:  # ijson takes an empty chunk as the end of the document
                continue
            for p in parsers:
                p.send(chunk)
            if top_type and top_type[0] != "FeatureCollection":
                raise _bad_file("assets.bulk.not_collection", type=str(top_type[0])[:40])
            for feature in features:
                yield _feature_record(index, feature, geometry_field, derived)
                index += 1
            del features[:]
        for p in parsers:
            p.close()
    except ijson.JSONError as exc:
        raise _bad_file("assets.bulk.bad_json", why=str(exc).splitlines()[0][:200]) from exc
    for feature in features:
        yield _feature_record(index, feature, geometry_field, derived)
        index += 1
    if not top_type or top_type[0] != "FeatureCollection":
        raise _bad_file("assets.bulk.not_collection", type=str(top_type[0] if top_type else "")[:40])


def _feature_record(index: int, feature: Any, geometry_field: str | None, derived: frozenset[str]) -> Record:
    rec = Record(where=f"features[{index}]", geojson=True)
    ok = isinstance(feature, dict) and feature.get("type") == "Feature"
    props = feature.get("properties") if ok else None
    geometry = feature.get("geometry") if ok else None
    if not ok or not isinstance(props, dict | None) or not isinstance(geometry, dict | None):
        rec.errors.append(FieldError(rec.where, "malformed", "assets.bulk.not_feature"))
        return rec
    rec.fields = {k: v for k, v in (props or {}).items() if k not in derived}
    if geometry is not None and geometry_field:
        if geometry_field == "geometry":
            rec.fields["geometry"] = geometry
        elif geometry.get("type") == "Point" and isinstance(geometry.get("coordinates"), list):
            lon_lat = [*geometry["coordinates"], None, None][:2]
            rec.fields[geometry_field] = {"lon": lon_lat[0], "lat": lon_lat[1]}
        else:
            rec.errors.append(FieldError(f"{rec.where}.geometry", "invalid", "assets.geometry_point"))
    return rec


def geojson_feature(doc: dict[str, Any], key: str, geometry_field: str | None) -> bytes:
    """One entity as a GeoJSON Feature (its id the entity's key, the rest in properties)."""
    geo = doc.get(geometry_field) if geometry_field else None
    if geometry_field != "geometry" and geo is not None:
        geo = {"type": "Point", "coordinates": [geo["lon"], geo["lat"]]}
    props = {k: v for k, v in doc.items() if k != geometry_field}
    feature = {"type": "Feature", "id": doc[key], "geometry": geo, "properties": props}
    return json.dumps(feature, ensure_ascii=False, separators=(",", ":")).encode()


GEOJSON_HEAD = b'{"type":"FeatureCollection","features":[\n'
GEOJSON_TAIL = b"\n]}\n"


# --- CSV -------------------------------------------------------------------------------------------------


def structured_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields of a model whose values are objects or lists: JSON text in a CSV cell."""

    def structured(annotation: Any) -> bool:
        if get_origin(annotation) in (dict, list, tuple):
            return True
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return True
        return any(structured(a) for a in get_args(annotation))

    return frozenset(name for name, f in model.model_fields.items() if structured(f.annotation))


def csv_columns(model: type[BaseModel], geometry_field: str | None) -> list[str]:
    """The CSV header of an entity: its public fields, geometry as WKT or a position as lon, lat."""
    columns: list[str] = []
    for name in model.model_fields:
        if name != geometry_field:
            columns.append(name)
        elif geometry_field == "geometry":
            columns.append("geometry")
        else:
            columns += ["lon", "lat"]
    return columns


def csv_line(doc: dict[str, Any], columns: list[str], geometry_field: str | None) -> str:
    """One entity as a CSV line of ``columns``."""
    geo = doc.get(geometry_field) if geometry_field else None
    cells: list[Any] = []
    for name in columns:
        if name == "geometry" and geometry_field == "geometry":
            cells.append(to_wkt(geo) if geo else "")
        elif name in ("lon", "lat") and geometry_field not in (None, "geometry"):
            cells.append("" if geo is None else repr(float(geo[name])))
        else:
            cells.append(_cell(doc.get(name)))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


async def csv_records(
    chunks: AsyncIterator[bytes], geometry_field: str | None, json_fields: frozenset[str], derived: frozenset[str]
) -> AsyncIterator[Record]:
    """The lines of a CSV file as records, read as the bytes arrive (the header names the fields)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""
    state = _CsvState(geometry_field, json_fields, derived)
    try:
        async for chunk in chunks:
            pending += decoder.decode(chunk)
            cut = _complete_lines_end(pending)
            if cut:
                for rec in state.parse(pending[:cut]):
                    yield rec
                pending = pending[cut:]
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise _bad_file("assets.bulk.not_utf8") from exc
    if pending.strip():
        for rec in state.parse(pending):
            yield rec
    if state.header is None:
        raise _bad_file("assets.bulk.no_header")


def _complete_lines_end(text: str) -> int:
    """The end of the last line of ``text`` that closes every quote it opened (0 if none does)."""
    end = text.rfind("\n")
    while end >= 0:
        # A field's quotes come in pairs ("" is an escaped quote), so an even count closes them all.
        if text.count('"', 0, end + 1) % 2 == 0:
            return end + 1
        end = text.rfind("\n", 0, end)
    return 0


class _CsvState:
    def __init__(self, geometry_field: str | None, json_fields: frozenset[str], derived: frozenset[str]) -> None:
        self.geometry_field = geometry_field
        self.json_fields = json_fields
        self.derived = derived
        self.header: list[str] | None = None
        self.line = 1  # physical line where the next record starts

    def parse(self, text: str) -> Iterator[Record]:
        reader = csv.reader(io.StringIO(text, newline=""))
        consumed = 0
        for cells in reader:
            start = self.line + consumed
            consumed = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if self.header is None:
                self.header = [c.strip() for c in cells]
                dupes = sorted({c for c in self.header if self.header.count(c) > 1})
                if dupes:
                    raise _bad_file("assets.bulk.duplicate_columns", columns=", ".join(dupes))
                continue
            yield _csv_record(start, self.header, cells, self)
        self.line += consumed


def _csv_record(line: int, header: list[str], cells: list[str], state: _CsvState) -> Record:
    geometry_field, json_fields = state.geometry_field, state.json_fields
    rec = Record(where=f"lines[{line}]")
    if len(cells) != len(header):
        rec.errors.append(
            FieldError(rec.where, "malformed", "assets.bulk.csv_width", {"expected": len(header), "got": len(cells)})
        )
        return rec
    lon_lat: dict[str, str] = {}
    for name, raw in zip(header, cells, strict=True):
        value = raw.strip()
        if not value or name in state.derived:
            continue
        if name in ("lon", "lat") and geometry_field:
            lon_lat[name] = value
        elif name == "geometry" and geometry_field == "geometry":
            try:
                rec.fields["geometry"] = from_wkt(value)
            except ValueError:
                rec.errors.append(FieldError(f"{rec.where}.geometry", "invalid", "assets.bulk.bad_wkt"))
        elif name in json_fields:
            try:
                rec.fields[name] = json.loads(value)
            except ValueError:
                rec.errors.append(FieldError(f"{rec.where}.{name}", "invalid", "assets.bulk.bad_json_cell"))
        else:
            rec.fields[name] = value
    if lon_lat and geometry_field:
        try:
            lon, lat = float(lon_lat.get("lon", "")), float(lon_lat.get("lat", ""))
        except ValueError:
            rec.errors.append(FieldError(f"{rec.where}.lon", "invalid", "assets.bulk.bad_lon_lat"))
        else:
            if geometry_field == "geometry":
                rec.fields.setdefault("geometry", {"type": "Point", "coordinates": [lon, lat]})
            else:
                rec.fields[geometry_field] = {"lon": lon, "lat": lat}
    return rec


# --- WKT (points and line strings, the geometries facilities have) -----------------------------------------

_WKT_RE = re.compile(r"^\s*(POINT|LINESTRING)\s*\(\s*([^()]*?)\s*\)\s*$", re.IGNORECASE)


def from_wkt(text: str) -> dict[str, Any]:
    """``POINT (lon lat)`` or ``LINESTRING (lon lat, ...)`` as a GeoJSON geometry; ValueError otherwise."""
    m = _WKT_RE.match(text)
    if not m:
        raise ValueError(text)
    positions = [[float(x) for x in p.split()] for p in m.group(2).split(",")]
    if any(len(p) != 2 for p in positions):
        raise ValueError(text)
    if m.group(1).upper() == "POINT":
        if len(positions) != 1:
            raise ValueError(text)
        return {"type": "Point", "coordinates": positions[0]}
    return {"type": "LineString", "coordinates": positions}


def to_wkt(geometry: dict[str, Any]) -> str:
    coords = geometry["coordinates"]
    if geometry["type"] == "Point":
        return f"POINT ({_pos(coords)})"
    return f"LINESTRING ({', '.join(_pos(p) for p in coords)})"


def _pos(p: Iterable[float]) -> str:
    return " ".join(repr(float(x)) for x in p)
