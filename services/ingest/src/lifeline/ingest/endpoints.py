"""REST edge of ingest: thin; parsing and rendering only, logic in service.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request, Response

from lifeline.kit import i18n
from lifeline.kit.api import client_address, require_any_role
from lifeline.kit.auth import Principal, PrincipalDep, authenticate
from lifeline.kit.bus import BusUnavailable
from lifeline.kit.http import FastRequest, FastResponse
from lifeline.kit.problems import ProblemError

from .registry import RegistryNotReady
from .schemas import IngestResultPublic, LatestPublic, ReadingsIn, ReadingsPage, SensorStatusPage
from .service import QUALITY_NAMES, STATE_NAMES, STATUS_NAME, IngestQueries, IngestService, Outcome
from .settings import IngestSettings
from .validation import REASON_NAME, Rejection, from_json, parse_time, pick_plain_json

router = APIRouter(prefix="/v1", tags=["readings"])

WRITER_ROLES = ("device", "service", "admin", "operator")
READER_ROLES = ("viewer", "operator", "partner", "service", "admin")

i18n.register(
    {
        "ingest.bad_json": {"zh-CN": "请求体不是有效的 JSON：{error}", "en": "request body is not valid JSON: {error}"},
        "ingest.no_readings": {
            "zh-CN": '请求体须为 {{"readings": [...]}}，且至少包含一条读数',
            "en": 'body must be {{"readings": [...]}} with at least one reading',
        },
        "ingest.batch_too_large": {
            "zh-CN": "一批最多 {max} 条读数，收到 {count} 条",
            "en": "a batch holds at most {max} readings, got {count}",
        },
        "ingest.body_too_large": {
            "zh-CN": "请求体超过 {max} 字节",
            "en": "request body exceeds {max} bytes",
        },
        "ingest.bus_unavailable": {
            "zh-CN": "消息总线暂不可用，未保存任何读数，请在 {retry_after} 秒后重试",
            "en": "the message bus is unavailable; nothing was kept; retry in {retry_after} s",
        },
        "ingest.registry_unavailable": {
            "zh-CN": "传感器登记册尚未从资产服务载入，未保存任何读数，请在 {retry_after} 秒后重试",
            "en": "the sensor registry is not loaded from assets yet; nothing was kept; retry in {retry_after} s",
        },
        "ingest.bad_time": {
            "zh-CN": "{field} 须为毫秒时间戳或带时区的 RFC 3339 时间",
            "en": "{field} must be epoch milliseconds or RFC 3339 with an offset",
        },
    }
)


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per request.
async def get_queries(request: Request) -> IngestQueries:
    return request.app.state.queries  # type: ignore[no-any-return]


QueriesDep = Annotated[IngestQueries, Depends(get_queries)]


_json = msgspec.json.Encoder()


def body_too_large(limit: int) -> ProblemError:
    return ProblemError(413, detail="ingest.body_too_large", params={"max": limit})


def parse_readings(body: bytes, max_batch: int) -> list[tuple[str, int, Any, str, Any] | Rejection]:
    """Every reading of a JSON body picked by `from_json`, or a problem for the whole request."""
    picked = pick_plain_json(body)
    if picked is None or len(picked) > max_batch:
        # The generic way, which says what is wrong with the body or with which reading.
        return [from_json(x) for x in parse_batch(body, max_batch)]
    return picked


def parse_batch(body: bytes, max_batch: int) -> list[Any]:
    """The `readings` list of a JSON body, or a problem for the whole request."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ProblemError(400, detail="ingest.bad_json", params={"error": str(exc)}) from exc
    items = doc.get("readings") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ProblemError(400, detail="ingest.no_readings")
    if len(items) > max_batch:
        raise ProblemError(413, detail="ingest.batch_too_large", params={"max": max_batch, "count": len(items)})
    return items


# JSON of results without a rejection, by (index, status), for the indexes of one batch.
_PLAIN_RESULTS: dict[tuple[int, int], bytes] = {}
_PLAIN_RESULTS_MAX_INDEX = 8192


def render_results(outcomes: list[Outcome], lang: str) -> bytes:
    """The per-reading results as the JSON document the REST and MQTT edges return.

    Written piece by piece: the results without a rejection (nearly all) are the same few bytes for
    a given index, which beats building and encoding a dict per reading."""
    parts: list[bytes] = []
    append = parts.append
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    cache = _PLAIN_RESULTS
    for i, o in enumerate(outcomes):
        name = STATUS_NAME[o.status]
        counts[name] += 1
        if o.rejection is None:
            piece = cache.get((i, o.status))
            if piece is None:
                piece = _json.encode({"index": i, "status": name})
                if i < _PLAIN_RESULTS_MAX_INDEX:
                    cache[(i, o.status)] = piece
            append(piece)
        else:
            append(
                _json.encode(
                    {
                        "index": i,
                        "status": name,
                        "reason": REASON_NAME[o.rejection.reason],
                        "detail": o.rejection.detail(lang),
                    }
                )
            )
    return b"".join(
        (
            b'{"results":[',
            b",".join(parts),
            b'],"accepted":%d,"duplicates":%d,"rejected":%d}'
            % (counts["accepted"], counts["duplicate"], counts["rejected"]),
        )
    )


async def ingest_items(
    service: IngestService,
    items: list[tuple[str, int, Any, str, Any] | Rejection],
    principal: Principal,
    retry_after_s: int,
    source: str | None,
) -> list[Outcome]:
    """Run the batch through the service; a bus outage or an unloaded registry becomes 503 with Retry-After."""
    try:
        return await service.ingest(items, principal, source=source)
    except (BusUnavailable, RegistryNotReady) as exc:
        raise unavailable(exc, retry_after_s) from exc


def unavailable(exc: Exception, retry_after_s: int) -> ProblemError:
    """503 with Retry-After for a passing outage (REST and gRPC): nothing was kept, retrying is safe."""
    detail = "ingest.registry_unavailable" if isinstance(exc, RegistryNotReady) else "ingest.bus_unavailable"
    return ProblemError(503, detail=detail, retry_after=retry_after_s, params={"retry_after": retry_after_s})


async def accept_readings(request: FastRequest) -> FastResponse:
    """POST /v1/readings, served ahead of FastAPI's routing (kit.http.add_fast_route): it is the hot path."""
    headers = request.headers
    principal = await authenticate(request.app, headers.get("authorization"))
    require_any_role(principal, WRITER_ROLES)
    state = request.app.state
    settings: IngestSettings = state.settings
    body = await request.body(settings.max_body_bytes, body_too_large)
    items = parse_readings(body, settings.max_batch)
    outcomes = await ingest_items(state.ingest, items, principal, settings.retry_after_s, request.client)
    lang = i18n.negotiate(headers.get("accept-language"))
    return FastResponse(render_results(outcomes, lang))


@router.post(
    "/readings",
    response_model=IngestResultPublic,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": ReadingsIn.model_json_schema()}}}},
    summary="Submit a batch of readings",
)
async def post_readings(request: Request) -> Response:
    """Validate and accept readings; each gets accepted, duplicate or rejected with a reason.

    Served by `accept_readings` ahead of FastAPI; this route describes it in the OpenAPI document and
    answers the same way if the fast route is not installed.
    """
    answer = await accept_readings(FastRequest(request.scope, request.receive))
    return Response(answer.body, status_code=answer.status, media_type=answer.media_type)


def time_param(raw: str | None, field: str) -> int | None:
    if raw is None or raw == "":
        return None
    ts = parse_time(int(raw)) if raw.lstrip("-").isdigit() else parse_time(raw)
    if ts is None:
        raise ProblemError(400, detail="ingest.bad_time", params={"field": field})
    return ts


def stored_public(row: Any) -> dict[str, Any]:
    return {
        "sensor_id": row.sensor_id,
        "device_time_ms": row.device_time_ms,
        "time": datetime.fromtimestamp(row.device_time_ms / 1000, UTC).isoformat(timespec="milliseconds"),
        "value": row.value,
        "unit": row.unit,
        "quality": QUALITY_NAMES.get(row.quality, "good"),
        "received_ms": row.received_ms,
    }


@router.get("/sensors/status", response_model=SensorStatusPage, summary="Online / offline / never seen")
async def sensor_status(
    request: Request,
    principal: PrincipalDep,
    queries: QueriesDep,
    state: Annotated[str | None, Query(pattern="^(online|offline|never_seen)$")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    page_token: str | None = None,
) -> dict[str, Any]:
    require_any_role(principal, READER_ROLES)
    wanted = {v: k for k, v in STATE_NAMES.items()}.get(state) if state else None
    items, token = await queries.statuses(
        principal=principal, state=wanted, limit=limit, page_token=page_token, source=client_address(request)
    )
    return {
        "sensors": [
            {
                "sensor_id": s.sensor_id,
                "region": s.region,
                "state": STATE_NAMES[s.state],
                "last_seen_ms": s.last_seen_ms or None,
                "last_device_time_ms": s.last_device_time_ms or None,
                "interval_s": s.interval_s,
            }
            for s in items
        ],
        "next_page_token": token,
    }


@router.get("/sensors/{sensor_id}/readings", response_model=ReadingsPage, summary="Readings by device time")
async def sensor_readings(
    request: Request,
    sensor_id: str,
    principal: PrincipalDep,
    queries: QueriesDep,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    page_token: str | None = None,
) -> dict[str, Any]:
    require_any_role(principal, READER_ROLES)
    rows, token = await queries.readings(
        sensor_id=sensor_id,
        principal=principal,
        from_ms=time_param(from_, "from"),
        to_ms=time_param(to, "to"),
        limit=limit,
        page_token=page_token,
        source=client_address(request),
    )
    return {"readings": [stored_public(r) for r in rows], "next_page_token": token}


@router.get("/sensors/{sensor_id}/latest", response_model=LatestPublic, summary="Latest value by device time")
async def sensor_latest(
    request: Request, sensor_id: str, principal: PrincipalDep, queries: QueriesDep
) -> dict[str, Any]:
    require_any_role(principal, READER_ROLES)
    row = await queries.latest(sensor_id=sensor_id, principal=principal, source=client_address(request))
    return {
        "sensor_id": sensor_id,
        "reading": stored_public(row),
        "last_seen_ms": row.last_seen_ms,
        "state": STATE_NAMES.get(row.state, "online"),
    }
