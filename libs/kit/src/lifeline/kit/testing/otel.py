"""Fixtures: an in-memory OpenTelemetry span exporter installed once per test session."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lifeline.kit.config import InstanceSettings
from lifeline.kit.telemetry import setup_telemetry

__all__ = ["span_exporter"]

_EXPORTER = InMemorySpanExporter()
# The global provider can be set once per process: install it before any test asks for a tracer.
setup_telemetry(InstanceSettings(log_json=True), span_exporter=_EXPORTER)


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    """Spans finished during the test (cleared at its start)."""
    _EXPORTER.clear()
    return _EXPORTER
