"""lifeline.kit.telemetry: spans of real requests, JSON logs with trace ids, propagation over headers."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from lifeline.kit.config import InstanceSettings
from lifeline.kit.http import create_http_app, serve_http
from lifeline.kit.telemetry import (
    JsonLogFormatter,
    PlainLogFormatter,
    consume_span,
    current_trace_id,
    extract_trace_context,
    get_tracer,
    inject_trace_headers,
    instrument_sqlalchemy,
    publish_span,
    service_context,
    setup_telemetry,
    telemetry_resource,
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    setup_telemetry(InstanceSettings(log_json=True, log_level="INFO"), span_exporter=exporter)
    yield exporter
    exporter.clear()


def hex_trace(span: object) -> str:
    return format(span.context.trace_id, "032x")  # type: ignore[attr-defined]


def json_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


async def test_request_span_is_exported_and_log_line_carries_its_trace_id(
    exporter: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_http_app(title="demo", version="0")

    @app.get("/sensors/{sensor_id}")
    async def read_sensor(sensor_id: str) -> dict[str, str]:
        logging.getLogger("lifeline.demo.endpoints").info("read sensor", extra={"sensor_id": sensor_id})
        return {"sensor_id": sensor_id}

    server = await serve_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/sensors/GAS-001")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await server.stop()

    server_spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.attributes.get("http.route") for s in server_spans] == ["/sensors/{sensor_id}"], (
        "the probe must not be traced"
    )
    span = server_spans[0]

    line = next(entry for entry in json_lines(capsys.readouterr().err) if entry["message"] == "read sensor")
    assert line["trace_id"] == hex_trace(span)
    assert isinstance(line["span_id"], str) and len(line["span_id"]) == 16
    assert line["level"] == "INFO"
    assert line["logger"] == "lifeline.demo.endpoints"
    assert line["service"] == "demo"
    assert line["sensor_id"] == "GAS-001"
    assert str(line["ts"]).endswith("Z")


def test_resource_names_the_instance() -> None:
    attributes = telemetry_resource(InstanceSettings(tier="province", region="340000")).attributes
    assert attributes["service.namespace"] == "lifeline"
    assert attributes["lifeline.tier"] == "province"
    assert attributes["lifeline.region"] == "340000"


def test_injected_headers_give_a_consumer_span_in_the_same_trace(exporter: InMemorySpanExporter) -> None:
    with publish_span("readings.340100 publish", **{"messaging.destination.name": "readings.340100"}):
        headers = inject_trace_headers({"Nats-Msg-Id": "evt-1"})
    assert headers["Nats-Msg-Id"] == "evt-1"
    assert headers["traceparent"].startswith("00-")

    assert trace.get_current_span().get_span_context().is_valid is False
    with consume_span("readings.340100 process", headers, **{"messaging.consumer.group.name": "alerts"}) as span:
        assert span.is_recording()

    producer, consumer = exporter.get_finished_spans()
    assert producer.kind == SpanKind.PRODUCER
    assert consumer.kind == SpanKind.CONSUMER
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert consumer.attributes["messaging.system"] == "nats"
    assert consumer.attributes["messaging.consumer.group.name"] == "alerts"


def test_message_without_trace_context_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    assert extract_trace_context(None) == extract_trace_context({})
    with get_tracer("lifeline.test").start_as_current_span("unrelated"):
        with consume_span("events process", {"other": "header"}):
            pass
    consumer = exporter.get_finished_spans()[0]
    assert consumer.parent is None


def test_setup_is_idempotent_per_process(exporter: InMemorySpanExporter) -> None:
    provider = trace.get_tracer_provider()
    second = InMemorySpanExporter()
    setup_telemetry(InstanceSettings(), span_exporter=second)
    setup_telemetry(InstanceSettings(), span_exporter=second)
    assert trace.get_tracer_provider() is provider

    with get_tracer("lifeline.test").start_as_current_span("once"):
        pass
    assert [s.name for s in second.get_finished_spans()] == ["once"], "an exporter is attached once"
    assert [s.name for s in exporter.get_finished_spans()] == ["once"]
    exposition = generate_latest(REGISTRY).decode()
    assert exposition.count("# TYPE target_info gauge") <= 1, "one Prometheus reader per process"


async def test_outgoing_httpx_request_continues_the_trace(exporter: InMemorySpanExporter) -> None:
    # setup_telemetry (the exporter fixture) instruments httpx process-wide: no instrument_httpx() here.
    app = create_http_app(title="demo", version="0")

    @app.get("/ping")
    async def ping() -> dict[str, str | None]:
        return {"trace_id": current_trace_id()}

    server = await serve_http(app, "127.0.0.1", 0)
    try:
        with get_tracer("lifeline.test").start_as_current_span("caller") as caller:
            async with httpx.AsyncClient(base_url=server.url) as client:
                body = (await client.get("/ping")).json()
    finally:
        await server.stop()
    assert body["trace_id"] == format(caller.get_span_context().trace_id, "032x")
    client_spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert client_spans and client_spans[0].context.trace_id == caller.get_span_context().trace_id


async def test_sqlalchemy_statements_are_traced(exporter: InMemorySpanExporter) -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    instrument_sqlalchemy(engine)
    instrument_sqlalchemy(engine)
    try:
        with get_tracer("lifeline.test").start_as_current_span("query"):
            async with engine.connect() as conn:
                assert (await conn.execute(text("select 42"))).scalar() == 42
    finally:
        await engine.dispose()
    db_spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(db_spans) == 1, "instrumenting an engine twice must not double its spans"
    assert "select 42" in str(db_spans[0].attributes)


def test_formatters_carry_trace_ids_extras_and_exceptions(exporter: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("lifeline.kit.test_formatters")
    logger.addHandler(handler)
    try:
        with get_tracer("lifeline.test").start_as_current_span("work") as span, service_context("alerts"):
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed", extra={"rule": "gas-high", "count": 3})
        handler.setFormatter(PlainLogFormatter())
        with get_tracer("lifeline.test").start_as_current_span("plain") as plain_span:
            logger.warning("plain line")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().splitlines()[0], stream.getvalue().splitlines()[-1]
    entry = json.loads(first)
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["service"] == "alerts"
    assert entry["rule"] == "gas-high" and entry["count"] == 3
    assert entry["level"] == "ERROR"
    assert "ValueError: boom" in entry["exception"]
    assert format(plain_span.get_span_context().trace_id, "032x") in second
    assert "plain line" in second


def test_new_traces_are_recorded_only_while_spans_are_exported() -> None:
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    from lifeline.kit.telemetry import _ExportedOnly

    sampler = _ExportedOnly(1.0)
    assert sampler.should_sample(None, 1, "root").decision == Decision.DROP, "no exporter: nothing to record"
    sampled_caller = set_span_in_context(
        NonRecordingSpan(SpanContext(7, 9, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    )
    assert sampler.should_sample(sampled_caller, 7, "child").decision == Decision.RECORD_AND_SAMPLE
    sampler.exporting = True
    assert sampler.should_sample(None, 1, "root").decision == Decision.RECORD_AND_SAMPLE
    assert _ExportedOnly(0.0).should_sample(None, 1, "root").decision == Decision.DROP


@pytest.mark.parametrize(
    "created",
    [
        1_700_000_000.0,
        1_700_000_000.0004995,  # rounds to ...000500 µs: 000 ms
        1_700_000_000.9994999,
        1_700_000_000.9999996,  # rounds up into the next second
        1_700_000_001.25,  # same second as the line before: the cached part
        951_782_400.123,  # 2000-02-29
    ],
)
def test_json_line_time_is_the_records_utc_time_to_the_millisecond(created: float) -> None:
    # The seconds are formatted once per second and reused: the result must still be what datetime gives.
    record = logging.LogRecord("lifeline.test", logging.INFO, __file__, 1, "at %s", ("t",), None)
    record.created = created
    entry = json.loads(JsonLogFormatter().format(record))
    expected = dt.datetime.fromtimestamp(created, tz=dt.UTC).isoformat(timespec="milliseconds")
    assert entry["ts"] == expected.replace("+00:00", "Z")
    assert entry["message"] == "at t"


def test_trace_context_is_extracted_only_from_headers_that_carry_it(exporter: InMemorySpanExporter) -> None:
    # Headers without any propagated field give an empty context; each field alone is still read.
    assert extract_trace_context({"content-type": "application/json"}) == otel_context.Context()
    assert extract_trace_context(None) == otel_context.Context()
    with get_tracer("lifeline.test").start_as_current_span("caller") as caller:
        carried = inject_trace_headers({"content-type": "application/json"})
    parent = trace.get_current_span(extract_trace_context(carried)).get_span_context()
    assert parent.trace_id == caller.get_span_context().trace_id
    only_baggage = extract_trace_context({"baggage": "tenant=340100"})
    assert baggage.get_baggage("tenant", only_baggage) == "340100"
