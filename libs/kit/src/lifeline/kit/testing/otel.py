"""Fixtures: an in-memory OpenTelemetry span exporter installed once per test session."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["span_exporter"]

_EXPORTER = InMemorySpanExporter()


def _install() -> None:
    # The global provider can be set once per process; install ours before any test asks for a tracer.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))


_install()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    """Spans finished during the test (cleared at its start)."""
    _EXPORTER.clear()
    return _EXPORTER
