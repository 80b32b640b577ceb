"""Alerts settings (environment prefix ``LIFELINE_ALERTS_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from lifeline.kit.config import ServiceSettings


class AlertsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFELINE_ALERTS_", extra="ignore")
    service_name: ClassVar[str] = "alerts"

    http_port: int = 8103
    grpc_port: int = 9103
    # An operator's quantity catalogue overlaid on the packaged one (default thresholds come from it).
    quantities_file: Path | None = None
    # An operator's alert policy overlaid on the packaged one (time limits, `for` durations, margins, roles).
    policy_file: Path | None = None
    max_page: int = 1000
    # Readings are evaluated in batches: one transaction per pull, however many readings it carries. No
    # linger: ingest already batches readings (hundreds per message) and most batches write nothing.
    consumer_batch: int = 64
    consumer_linger_s: float = 0.0
    # How often the workflow's time limits (and silences starting or ending) are checked.
    timer_interval_s: float = 5.0
