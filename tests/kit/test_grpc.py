"""lifeline.kit.grpc against a real grpc.aio server: health, reflection, problems in rich status, tracing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lifeline.kit.config import InstanceSettings
from lifeline.kit.grpc import (
    GrpcServer,
    abort_with_problem,
    grpc_code_for_status,
    problem_from_rpc_error,
    start_grpc_server,
)
from lifeline.kit.problems import FieldError, ProblemError
from lifeline.kit.telemetry import setup_telemetry
from lifeline.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

QUERY = "lifeline.v1.TelemetryQuery"
INGEST = "lifeline.v1.TelemetryIngest"
SECRET = "hunter2@db.internal"


class Query(telemetry_pb2_grpc.TelemetryQueryServicer):
    async def GetLatest(self, request: Any, context: Any) -> telemetry_pb2.GetLatestResponse:
        if request.sensor_id == "missing":
            raise ProblemError(404, detail="传感器 {sensor_id} 不存在", params={"sensor_id": request.sensor_id})
        if request.sensor_id == "":
            await abort_with_problem(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                ProblemError(400, errors=[FieldError("sensor_id", "required", "validation.missing")]),
            )
        if request.sensor_id == "boom":
            raise RuntimeError(f"lost connection to {SECRET}")
        return telemetry_pb2.GetLatestResponse(last_seen_ms=42)

    async def ListSensorStatus(self, request: Any, context: Any) -> telemetry_pb2.ListSensorStatusResponse:
        # A plain proto problem, as a relay of another instance's answer would send it.
        await abort_with_problem(
            context,
            grpc.StatusCode.PERMISSION_DENIED,
            common_pb2.Problem(type="https://lifeline.dev/problems/forbidden", title="Forbidden", status=403),
        )


class Ingest(telemetry_pb2_grpc.TelemetryIngestServicer):
    async def IngestStream(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> telemetry_pb2.IngestStreamResponse:
        async for _ in request_iterator:
            raise ProblemError(413, detail="too many")
        return telemetry_pb2.IngestStreamResponse()


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    server = await start_grpc_server(
        host="127.0.0.1",
        port=0,
        servicers=[
            (telemetry_pb2_grpc.add_TelemetryQueryServicer_to_server, Query()),
            (telemetry_pb2_grpc.add_TelemetryIngestServicer_to_server, Ingest()),
        ],
        service_names=[QUERY, INGEST],
    )
    yield server
    await server.stop(0.5)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield channel


async def check(channel: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def test_binds_a_free_port_and_reports_serving(server: GrpcServer, channel: grpc.aio.Channel) -> None:
    assert server.port > 0
    assert server.address == f"127.0.0.1:{server.port}"
    assert await check(channel, "") == health_pb2.HealthCheckResponse.SERVING
    assert await check(channel, QUERY) == health_pb2.HealthCheckResponse.SERVING

    await server.set_serving(QUERY, False)
    assert await check(channel, QUERY) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await check(channel, INGEST) == health_pb2.HealthCheckResponse.SERVING

    await server.set_serving("", False)
    assert await check(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await check(channel, INGEST) == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.set_serving("", True)
    assert await check(channel, QUERY) == health_pb2.HealthCheckResponse.SERVING

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(channel, "lifeline.v1.Nothing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in call:
        names |= {s.name for s in response.list_services_response.service}
    assert names == {QUERY, INGEST, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


async def test_abort_with_problem_round_trips_the_problem(channel: grpc.aio.Channel) -> None:
    stub = telemetry_pb2_grpc.TelemetryQueryStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetLatest(telemetry_pb2.GetLatestRequest(sensor_id=""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    problem = problem_from_rpc_error(err.value)
    assert problem is not None
    assert problem.status == 400
    assert problem.title == "请求无效"
    assert problem.type == "https://lifeline.dev/problems/bad-request"
    assert list(problem.errors) == [
        common_pb2.FieldViolation(field="sensor_id", code="required", reason="缺少必填字段")
    ]

    # The standard rich status is consistent and carries the BadRequest detail for generic clients.
    status = rpc_status.from_call(err.value)
    assert status is not None and status.message == err.value.details() == "请求无效"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    assert [(v.field, v.reason, v.description) for v in bad_request.field_violations] == [
        ("sensor_id", "required", "缺少必填字段")
    ]


async def test_problem_error_raised_in_a_servicer_is_mapped_and_localized(channel: grpc.aio.Channel) -> None:
    stub = telemetry_pb2_grpc.TelemetryQueryStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetLatest(telemetry_pb2.GetLatestRequest(sensor_id="missing"), metadata=(("accept-language", "en"),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    problem = problem_from_rpc_error(err.value)
    assert problem is not None
    assert (problem.status, problem.title, problem.detail) == (404, "Not found", "传感器 missing 不存在")
    assert err.value.details() == "Not found: 传感器 missing 不存在"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListSensorStatus(telemetry_pb2.ListSensorStatusRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    relayed = problem_from_rpc_error(err.value)
    assert relayed is not None and relayed.title == "Forbidden"

    assert (await stub.GetLatest(telemetry_pb2.GetLatestRequest(sensor_id="ok"))).last_seen_ms == 42


async def test_problem_in_a_client_streaming_call(channel: grpc.aio.Channel) -> None:
    stub = telemetry_pb2_grpc.TelemetryIngestStub(channel)

    async def chunks() -> AsyncIterator[telemetry_pb2.IngestStreamRequest]:
        yield telemetry_pb2.IngestStreamRequest()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.IngestStream(chunks())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    problem = problem_from_rpc_error(err.value)
    assert problem is not None and problem.status == 413 and problem.detail == "too many"


async def test_unexpected_error_is_internal_without_internals(channel: grpc.aio.Channel) -> None:
    stub = telemetry_pb2_grpc.TelemetryQueryStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetLatest(telemetry_pb2.GetLatestRequest(sensor_id="boom"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in (err.value.details() or "")
    assert "RuntimeError" not in (err.value.details() or "")
    problem = problem_from_rpc_error(err.value)
    assert problem is not None and problem.status == 500 and problem.title == "服务器内部错误"
    assert SECRET not in str(problem)


async def test_error_without_problem_gives_none(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(channel, "lifeline.v1.Nothing")
    assert problem_from_rpc_error(err.value) is None


async def test_calls_are_traced_but_health_checks_are_not(channel: grpc.aio.Channel) -> None:
    exporter = InMemorySpanExporter()
    setup_telemetry(InstanceSettings(), span_exporter=exporter)
    stub = telemetry_pb2_grpc.TelemetryQueryStub(channel)
    await stub.GetLatest(telemetry_pb2.GetLatestRequest(sensor_id="ok"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetLatest(telemetry_pb2.GetLatestRequest(sensor_id="missing"))
    await check(channel, QUERY)
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in spans] == [f"/{QUERY}/GetLatest"] * 2
    assert spans[1].attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_stop_reports_not_serving_before_closing(server: GrpcServer, channel: grpc.aio.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=QUERY))
    seen = [(await watch.read()).status]
    stopping = asyncio.create_task(server.stop(1.0))
    seen.append((await watch.read()).status)
    await stopping
    assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(channel, QUERY)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await server.stop(0)


async def test_port_in_use_fails(server: GrpcServer) -> None:
    with pytest.raises((OSError, RuntimeError)):
        await start_grpc_server(
            host="127.0.0.1",
            port=server.port,
            servicers=[(telemetry_pb2_grpc.add_TelemetryQueryServicer_to_server, Query())],
            service_names=[QUERY],
        )


async def test_servers_with_reuse_port_share_a_port() -> None:
    def start(port: int, reuse_port: bool = True) -> Any:
        return start_grpc_server(
            host="127.0.0.1",
            port=port,
            servicers=[(telemetry_pb2_grpc.add_TelemetryQueryServicer_to_server, Query())],
            service_names=[QUERY],
            reuse_port=reuse_port,
        )

    first = await start(0)
    second = await start(first.port)
    try:
        assert second.port == first.port
        with pytest.raises((OSError, RuntimeError)):
            await start(first.port, reuse_port=False)
        await first.server.stop(0)
        async with grpc.aio.insecure_channel(first.address) as channel:
            assert await check(channel, QUERY) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await first.server.stop(0)
        await second.server.stop(0)


def test_http_status_to_grpc_code() -> None:
    assert grpc_code_for_status(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code_for_status(401) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code_for_status(403) == grpc.StatusCode.PERMISSION_DENIED
    assert grpc_code_for_status(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code_for_status(409) == grpc.StatusCode.ALREADY_EXISTS
    assert grpc_code_for_status(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code_for_status(418) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_code_for_status(502) == grpc.StatusCode.INTERNAL
