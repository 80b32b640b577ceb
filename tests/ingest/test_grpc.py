"""Ingest over gRPC: same per-reading results as REST, statuses with problem details, reads."""

from __future__ import annotations

import math

import grpc
import pytest

from lifeline.ingest.app import IngestApp
from lifeline.kit.grpc import problem_from_rpc_error
from lifeline.v1 import telemetry_pb2 as T
from lifeline.v1 import telemetry_pb2_grpc

from .helpers import count_rows, latest_of, now_ms, stored_rows, wait_stored


def pb(sensor: str = "GAS-CH4-1", ts: int | None = None, value: float = 1.0, unit: str = "", quality: int = 0):
    return T.Reading(sensor_id=sensor, device_time_ms=ts or now_ms(), value=value, unit=unit, quality=quality)


@pytest.fixture
async def stubs(ingest: IngestApp, writer_token: str):
    async with ingest.grpc_channel() as channel:
        md = (("authorization", f"Bearer {writer_token}"),)
        yield telemetry_pb2_grpc.TelemetryIngestStub(channel), telemetry_pb2_grpc.TelemetryQueryStub(channel), md


async def test_unary_batch_results_per_reading(stubs, ingest: IngestApp):
    ingest_stub, query, md = stubs
    t = now_ms() - 5000
    req = T.IngestBatchRequest(
        readings=[
            pb(ts=t, value=2.0),
            pb(ts=t, value=2.0),  # same reading twice in one batch: duplicate
            pb(ts=t, value=3.0),  # conflict
            pb(sensor="NOPE"),
            pb(value=math.nan),
            pb(value=math.inf),
            pb(ts=t + 1, quality=99),
            pb("WATER-P-1", ts=t, value=300, unit="kPa"),  # 0.3 MPa
        ]
    )
    resp = await ingest_stub.IngestBatch(req, metadata=(*md, ("accept-language", "en")))
    assert [r.status for r in resp.results] == [
        T.READING_STATUS_ACCEPTED,
        T.READING_STATUS_DUPLICATE,
        T.READING_STATUS_REJECTED,
        T.READING_STATUS_REJECTED,
        T.READING_STATUS_REJECTED,
        T.READING_STATUS_REJECTED,
        T.READING_STATUS_REJECTED,
        T.READING_STATUS_ACCEPTED,
    ]
    assert [r.reason for r in resp.results][2:7] == [
        T.REJECT_REASON_CONFLICT,
        T.REJECT_REASON_UNKNOWN_SENSOR,
        T.REJECT_REASON_NOT_FINITE,
        T.REJECT_REASON_NOT_FINITE,
        T.REJECT_REASON_BAD_QUALITY_FLAG,
    ]
    assert (resp.accepted, resp.duplicates, resp.rejected) == (2, 1, 5)
    assert "not registered" in resp.results[3].detail
    await wait_stored(ingest, 2)
    assert await latest_of(ingest, "WATER-P-1") == (t, pytest.approx(0.3))
    latest = await query.GetLatest(T.GetLatestRequest(sensor_id="GAS-CH4-1"), metadata=md)
    assert latest.reading.value == 2.0
    page = await query.ListReadings(T.ListReadingsRequest(sensor_id="GAS-CH4-1", limit=10), metadata=md)
    assert [r.device_time_ms for r in page.readings] == [t]
    status = await query.ListSensorStatus(T.ListSensorStatusRequest(state=T.SENSOR_STATE_NEVER_SEEN), metadata=md)
    assert {s.sensor_id for s in status.sensors} == {"GAS-CH4-2", "WATER-P-2", "OLD-1"}


async def test_client_stream_indexes_run_across_chunks(stubs, ingest: IngestApp):
    ingest_stub, _, md = stubs
    t = now_ms() - 100_000

    async def chunks():
        for c in range(4):
            yield T.IngestStreamRequest(readings=[pb(ts=t + c * 10 + i, value=float(i)) for i in range(10)])
        yield T.IngestStreamRequest(readings=[pb(sensor="NOPE")])

    resp = await ingest_stub.IngestStream(chunks(), metadata=md)
    assert resp.accepted == 40 and resp.rejected == 1
    assert [r.index for r in resp.results] == list(range(41))
    assert resp.results[40].reason == T.REJECT_REASON_UNKNOWN_SENSOR
    await wait_stored(ingest, 40)
    assert len(await stored_rows(ingest)) == 40


async def test_grpc_errors_carry_problem_details(stubs, ingest: IngestApp, token_factory):
    ingest_stub, query, md = stubs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.IngestBatch(T.IngestBatchRequest(readings=[pb(ts=i + 1) for i in range(5001)]), metadata=md)
    assert (
        err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED or err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    )
    problem = problem_from_rpc_error(err.value)
    assert problem is not None and problem.status == 413
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_stub.IngestBatch(T.IngestBatchRequest(readings=[pb()]))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    other = await token_factory("viewer-340200")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query.GetLatest(
            T.GetLatestRequest(sensor_id="GAS-CH4-1"), metadata=(("authorization", f"Bearer {other}"),)
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query.GetLatest(T.GetLatestRequest(sensor_id="NOPE"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await count_rows(ingest) == 0
