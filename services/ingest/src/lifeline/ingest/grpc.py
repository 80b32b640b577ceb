"""gRPC edge of ingest: TelemetryIngest (unary batch, client streaming) and TelemetryQuery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from lifeline.kit import i18n
from lifeline.kit.api import require_any_role
from lifeline.kit.auth import current_principal
from lifeline.kit.bus import BusUnavailable
from lifeline.kit.problems import ProblemError
from lifeline.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

from .endpoints import READER_ROLES, WRITER_ROLES, unavailable
from .registry import RegistryNotReady
from .service import ACCEPTED, DUPLICATE, REJECTED, IngestQueries, IngestService, Outcome
from .settings import IngestSettings
from .validation import from_proto


def language(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "accept-language":
            return i18n.negotiate(str(value))
    return i18n.DEFAULT_LANGUAGE


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _results_entry(result: bytes) -> bytes:
    """One element of a response's ``repeated ReadingResult results = 1`` in wire format."""
    return b"\x0a" + _varint(len(result)) + result


# Entries of results without a rejection, by (index, status), for the indexes of one batch.
_PLAIN_ENTRIES: dict[tuple[int, int], bytes] = {}
_PLAIN_ENTRIES_MAX_INDEX = 8192


def _plain_entry(index: int, status: int) -> bytes:
    # ReadingResult fields 1 (index) and 2 (status), both varints; index 0 is the default, left out.
    return _results_entry((b"\x08" + _varint(index) if index else b"") + b"\x10" + _varint(status))


def fill_results(response: Any, outcomes: list[Outcome], lang: str, offset: int = 0) -> None:
    """Append one result per outcome (indexes from ``offset``) and count them.

    The results are appended as one piece of wire format (``MergeFromString``): adding them one by one
    cost ~0.5 µs a reading, a tenth of the whole batch's handling. Only rejections need encoding per
    reading (they carry a localized detail)."""
    parts: list[bytes] = []
    append = parts.append
    counts = {ACCEPTED: 0, DUPLICATE: 0, REJECTED: 0}
    cache = _PLAIN_ENTRIES
    for i, o in enumerate(outcomes, offset):
        status = o.status
        counts[status] += 1
        if o.rejection is None:
            entry = cache.get((i, status))
            if entry is None:
                entry = _plain_entry(i, status)
                if i < _PLAIN_ENTRIES_MAX_INDEX:
                    cache[(i, status)] = entry
            append(entry)
        else:
            result = telemetry_pb2.ReadingResult(
                index=i, status=status, reason=o.rejection.reason, detail=o.rejection.detail(lang)
            )
            append(_results_entry(result.SerializeToString()))
    response.MergeFromString(b"".join(parts))
    response.accepted += counts[ACCEPTED]
    response.duplicates += counts[DUPLICATE]
    response.rejected += counts[REJECTED]


class TelemetryIngestServicer(telemetry_pb2_grpc.TelemetryIngestServicer):
    def __init__(self, service: IngestService, settings: IngestSettings) -> None:
        self.service = service
        self.settings = settings

    async def _ingest(self, readings: Any, peer: str | None) -> list[Outcome]:
        principal = current_principal()
        require_any_role(principal, WRITER_ROLES)
        if len(readings) > self.settings.max_batch:
            raise ProblemError(
                413, detail="ingest.batch_too_large", params={"max": self.settings.max_batch, "count": len(readings)}
            )
        try:
            return await self.service.ingest([from_proto(r) for r in readings], principal, source=peer)
        except (BusUnavailable, RegistryNotReady) as exc:
            raise unavailable(exc, self.settings.retry_after_s) from exc

    async def IngestBatch(self, request: Any, context: Any) -> telemetry_pb2.IngestBatchResponse:
        if not request.readings:
            raise ProblemError(400, detail="ingest.no_readings")
        outcomes = await self._ingest(request.readings, context.peer())
        response = telemetry_pb2.IngestBatchResponse()
        fill_results(response, outcomes, language(context))
        return response

    async def IngestStream(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> telemetry_pb2.IngestStreamResponse:
        """Each chunk is judged and acknowledged by JetStream as it arrives; indexes run across chunks.

        If the bus fails mid-stream the call ends UNAVAILABLE; chunks before it were accepted and a
        client that resends the whole stream gets `duplicate` for them.
        """
        response = telemetry_pb2.IngestStreamResponse()
        lang = language(context)
        offset = 0
        async for chunk in request_iterator:
            if not chunk.readings:
                continue
            outcomes = await self._ingest(chunk.readings, context.peer())
            fill_results(response, outcomes, lang, offset)
            offset += len(outcomes)
        return response


def stored_proto(row: Any) -> telemetry_pb2.StoredReading:
    return telemetry_pb2.StoredReading(
        sensor_id=row.sensor_id,
        device_time_ms=row.device_time_ms,
        value=row.value,
        unit=row.unit,
        quality=row.quality or common_pb2.QUALITY_GOOD,
        received_time_ms=row.received_ms,
    )


class TelemetryQueryServicer(telemetry_pb2_grpc.TelemetryQueryServicer):
    def __init__(self, queries: IngestQueries) -> None:
        self.queries = queries

    async def ListReadings(self, request: Any, context: Any) -> telemetry_pb2.ListReadingsResponse:
        principal = current_principal()
        require_any_role(principal, READER_ROLES)
        rows, token = await self.queries.readings(
            sensor_id=request.sensor_id,
            principal=principal,
            from_ms=request.from_ms or None,
            to_ms=request.to_ms or None,
            limit=request.limit or 1000,
            page_token=request.page_token or None,
            source=context.peer(),
        )
        return telemetry_pb2.ListReadingsResponse(readings=[stored_proto(r) for r in rows], next_page_token=token or "")

    async def GetLatest(self, request: Any, context: Any) -> telemetry_pb2.GetLatestResponse:
        principal = current_principal()
        require_any_role(principal, READER_ROLES)
        row = await self.queries.latest(sensor_id=request.sensor_id, principal=principal, source=context.peer())
        return telemetry_pb2.GetLatestResponse(reading=stored_proto(row), last_seen_ms=row.last_seen_ms)

    async def ListSensorStatus(self, request: Any, context: Any) -> telemetry_pb2.ListSensorStatusResponse:
        principal = current_principal()
        require_any_role(principal, READER_ROLES)
        items, token = await self.queries.statuses(
            principal=principal,
            state=request.state or None,
            limit=request.limit or 1000,
            page_token=request.page_token or None,
            source=context.peer(),
        )
        return telemetry_pb2.ListSensorStatusResponse(sensors=items, next_page_token=token or "")
