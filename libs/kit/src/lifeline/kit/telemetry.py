"""OpenTelemetry traces and metrics, structured logs, and trace propagation over NATS.

One TracerProvider and one MeterProvider serve the whole process, because in single-process mode several
services share it; each service tells its spans and metrics apart by the name of its tracer and meter
(:func:`get_tracer`, :func:`get_meter`). :func:`setup_telemetry` may be called by every service that
starts: the first call installs the providers, later calls only add exporters and re-apply logging.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from lifeline.kit.config import InstanceSettings

__all__ = [
    "JsonLogFormatter",
    "PlainLogFormatter",
    "configure_logging",
    "consume_span",
    "current_trace_id",
    "extract_trace_context",
    "flush_telemetry",
    "get_meter",
    "get_tracer",
    "grpc_server_interceptors",
    "inject_trace_headers",
    "instrument_fastapi",
    "instrument_httpx",
    "instrument_sqlalchemy",
    "publish_span",
    "service_context",
    "setup_telemetry",
    "telemetry_resource",
]

NAMESPACE: Final = "lifeline"
BUS_TRACER: Final = "lifeline.kit.bus"
# Probes and scrapes would drown the real requests in traces.
UNTRACED_HTTP_PATHS: Final = "/healthz,/readyz,/metrics"
UNTRACED_GRPC_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")

_HANDLER_MARK: Final = "_lifeline_handler"


class _ExportedOnly(Sampler):
    """Samples new traces (by ratio) only while an exporter takes spans; a sampled caller's trace is kept.

    Without an exporter (no OTLP endpoint, no test exporter) a recorded span goes nowhere, yet recording
    one costs more than a small request's own work. Dropped spans still carry a trace id for the logs.
    """

    def __init__(self, ratio: float) -> None:
        self.exporting = False
        self._root = TraceIdRatioBased(ratio)
        self._parent_based = ParentBased(self._root)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if not self.exporting and not trace.get_current_span(parent_context).get_span_context().trace_flags.sampled:
            return SamplingResult(Decision.DROP)
        return self._parent_based.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"ExportedOnly{{{self._parent_based.get_description()}}}"  # type: ignore[no-untyped-call]


@dataclass
class _Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    # None when the tracer provider was installed by someone else (its sampler is theirs).
    sampler: _ExportedOnly | None = None
    exporter_ids: set[int] = field(default_factory=set)
    otlp_endpoints: set[str] = field(default_factory=set)
    # Keeps exporters alive so that their ids in exporter_ids stay unique.
    exporters: list[SpanExporter] = field(default_factory=list)


_log = logging.getLogger(__name__)
_lock = threading.Lock()
_telemetry: _Telemetry | None = None
_service: contextvars.ContextVar[str | None] = contextvars.ContextVar("lifeline_service", default=None)


def telemetry_resource(instance: InstanceSettings) -> Resource:
    """Resource attributes of this process: service.namespace=lifeline, the instance's tier and region."""
    return Resource.create(
        {
            "service.namespace": NAMESPACE,
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or NAMESPACE,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            "deployment.environment.name": "development" if instance.dev_mode else "production",
            "lifeline.tier": str(instance.tier),
            "lifeline.region": instance.region,
        }
    )


def _install_providers(resource: Resource, sample_ratio: float = 1.0) -> _Telemetry:
    # The global providers can be set only once per process; one installed earlier (e.g. by the test
    # plugin, before any service started) is adopted so that its exporters keep receiving spans.
    current_tracer = trace.get_tracer_provider()
    sampler = None
    if isinstance(current_tracer, TracerProvider):
        tracer_provider = current_tracer
    else:
        # Sampling follows the caller's decision (traceparent) and else keeps `trace_sample_ratio` of new
        # traces: a busy front door need not record every one-reading request to stay observable.
        sampler = _ExportedOnly(sample_ratio)
        tracer_provider = TracerProvider(resource=resource, sampler=sampler)
        trace.set_tracer_provider(tracer_provider)
    current_meter = metrics.get_meter_provider()
    if isinstance(current_meter, MeterProvider):
        _log.warning("a MeterProvider was installed before setup_telemetry; /metrics lacks OpenTelemetry metrics")
        meter_provider = current_meter
    else:
        # The reader registers itself in prometheus_client's default registry, which /metrics serves.
        meter_provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
        metrics.set_meter_provider(meter_provider)
    return _Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, sampler=sampler)


def _traces_url(endpoint: str) -> str:
    # OTLP/HTTP takes the collector's base address in the settings, like OTEL_EXPORTER_OTLP_ENDPOINT does.
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def setup_telemetry(instance: InstanceSettings, *, span_exporter: SpanExporter | None = None) -> None:
    """Install the process-wide tracer and meter providers and logging; safe to call once per service."""
    global _telemetry
    configure_logging(level=instance.log_level, json_lines=instance.log_json)
    with _lock:
        if _telemetry is None:
            _telemetry = _install_providers(telemetry_resource(instance), instance.trace_sample_ratio)
            # Outgoing calls (webhook deliveries, token and key fetches) join the trace they are made in.
            instrument_httpx()
        state = _telemetry
        if instance.otlp_endpoint:
            url = _traces_url(instance.otlp_endpoint)
            if url not in state.otlp_endpoints:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                state.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
                state.otlp_endpoints.add(url)
        if span_exporter is not None and id(span_exporter) not in state.exporter_ids:
            # Synchronous export so that a test sees a span as soon as it has ended.
            state.tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
            state.exporter_ids.add(id(span_exporter))
            state.exporters.append(span_exporter)
        if state.sampler is not None and (state.otlp_endpoints or state.exporters):
            state.sampler.exporting = True


def flush_telemetry(timeout_millis: int = 5_000) -> bool:
    """Export buffered spans now (e.g. before the process exits); True if everything was exported."""
    state = _telemetry
    if state is None:
        return True
    return bool(state.tracer_provider.force_flush(timeout_millis))


def get_tracer(name: str) -> trace.Tracer:
    """The tracer of one service or module, from the process-wide provider."""
    return trace.get_tracer(name)


def get_meter(name: str) -> metrics.Meter:
    """The meter of one service or module, from the process-wide provider."""
    return metrics.get_meter(name)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None outside a recorded trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


# --- logging ----------------------------------------------------------------------------------------------

_RESERVED = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
        "color_message",  # uvicorn's ANSI-coloured copy of the message
        "lifeline_trace",  # set by PlainLogFormatter when both formats share a record
        "otelSpanID",
        "otelTraceID",
        "otelTraceSampled",
        "otelServiceName",
    }
)


@contextlib.contextmanager
def service_context(name: str) -> Iterator[None]:
    """Attribute log lines written inside the block (and tasks started there) to the named service."""
    token = _service.set(name)
    try:
        yield
    finally:
        _service.reset(token)


def _service_of(record: logging.LogRecord) -> str:
    explicit = record.__dict__.get("service")
    if isinstance(explicit, str) and explicit:
        return explicit
    bound = _service.get()
    if bound:
        return bound
    parts = record.name.split(".")
    if len(parts) >= 2 and parts[0] == NAMESPACE and parts[1] not in {"kit", "v1"}:
        return parts[1]
    return NAMESPACE


def _span_ids() -> tuple[str | None, str | None]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# What json.dumps(entry, ensure_ascii=False, default=str) builds anew for every call (a few µs per line:
# the audit log writes a line per request).
_json_line = json.JSONEncoder(ensure_ascii=False, default=str)
# (epoch second, its "YYYY-MM-DDTHH:MM:SS"): lines of the same second share the formatted part.
_ts_second: tuple[int, str] = (-1, "")


def _utc_millis(created: float) -> str:
    """``created`` as ``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`` with a Z.

    Rounded to the microsecond first (half to even), as datetime does, then cut to the millisecond.
    """
    global _ts_second
    sec = int(created)
    us = round((created - sec) * 1e6)
    if us >= 1_000_000 or sec < 0:
        ts = dt.datetime.fromtimestamp(created, tz=dt.UTC)
        return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    cached_sec, prefix = _ts_second
    if cached_sec != sec:
        prefix = dt.datetime.fromtimestamp(sec, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_second = (sec, prefix)
    return f"{prefix}.{us // 1000:03d}Z"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, trace_id, span_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a single JSON line."""
        trace_id, span_id = _span_ids()
        entry: dict[str, Any] = {
            "ts": _utc_millis(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": _service_of(record),
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for key, value in record.__dict__.items():
            # Extras never replace the fields every log consumer relies on.
            if key not in _RESERVED and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _json_line.encode(entry)


class PlainLogFormatter(logging.Formatter):
    """Human-readable lines for a terminal, still carrying the trace id."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(lifeline_trace)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render the record with the current trace id, if any."""
        trace_id, _ = _span_ids()
        record.lifeline_trace = f" [{trace_id}]" if trace_id else ""
        return super().format(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    # Looks sys.stderr up on every record: test runners and the launcher swap it after start-up.
    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(*, level: str = "INFO", json_lines: bool = True) -> None:
    """Send the root logger to stderr, as JSON lines or plain text; replaces an earlier call's handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonLogFormatter() if json_lines else PlainLogFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


# --- instrumentation helpers ------------------------------------------------------------------------------


def instrument_fastapi(app: Any) -> None:
    """Trace every request of a FastAPI app (health probes and scrapes excluded)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # One span per request, not one more per body chunk received and per response part sent: a
    # 50 kB batch arrives in many chunks, and those spans cost more than handling the readings.
    FastAPIInstrumentor.instrument_app(app, excluded_urls=UNTRACED_HTTP_PATHS, exclude_spans=["receive", "send"])


def grpc_server_interceptors() -> list[Any]:
    """Server interceptors that trace every grpc.aio call (health and reflection excluded)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_name

    untraced = negate(any_of(*(service_name(s) for s in UNTRACED_GRPC_SERVICES)))
    return [aio_server_interceptor(filter_=untraced)]  # type: ignore[no-untyped-call]


def instrument_httpx() -> None:
    """Trace (and propagate context on) every httpx request of the process; idempotent."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


_instrumented_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def instrument_sqlalchemy(engine: Any) -> None:
    """Trace the statements of one SQLAlchemy engine (sync or async); idempotent per engine."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as sqla_version

    sync_engine = getattr(engine, "sync_engine", engine)
    with _lock:
        if sync_engine in _instrumented_engines:
            return
        _instrumented_engines.add(sync_engine)
    # SQLAlchemyInstrumentor instruments only once per process; the engine tracer can be attached to
    # each service's engine separately.
    name = "opentelemetry.instrumentation.sqlalchemy"
    usage = metrics.get_meter(name, sqla_version).create_up_down_counter(
        name="db.client.connections.usage",
        unit="connections",
        description="The number of connections that are currently in state described by the state attribute.",
    )
    EngineTracer(trace.get_tracer(name, sqla_version), sync_engine, usage)  # type: ignore[no-untyped-call]


# --- propagation over NATS ----------------------------------------------------------------------------------


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add W3C traceparent/tracestate of the current span to message headers; returns the same dict."""
    propagate.inject(headers)
    return headers


# (propagator, the header names it reads), for the propagator installed now.
_propagated_fields: tuple[object, frozenset[str]] = (None, frozenset())


def extract_trace_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by message headers (an empty context when there is none)."""
    global _propagated_fields
    # Most requests and messages carry no trace context: skip copying the headers and running every
    # propagator when none of the headers they read is there (they would find nothing).
    textmap = propagate.get_global_textmap()
    owner, fields = _propagated_fields
    if owner is not textmap:
        fields = frozenset(textmap.fields)
        _propagated_fields = (textmap, fields)
    if not headers or fields.isdisjoint(headers):
        return otel_context.Context()
    return propagate.extract(dict(headers), context=otel_context.Context())


@contextlib.contextmanager
def consume_span(name: str, headers: Mapping[str, str] | None, **attrs: AttributeValue) -> Iterator[Span]:
    """A CONSUMER span, child of the context in the message headers, current inside the block."""
    attributes: dict[str, AttributeValue] = {"messaging.system": "nats", **attrs}
    with get_tracer(BUS_TRACER).start_as_current_span(
        name, context=extract_trace_context(headers), kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def publish_span(name: str, **attrs: AttributeValue) -> Iterator[Span]:
    """A PRODUCER span, current inside the block so that headers injected there point at it."""
    attributes: dict[str, AttributeValue] = {"messaging.system": "nats", **attrs}
    with get_tracer(BUS_TRACER).start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield span
