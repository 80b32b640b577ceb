"""Ingest settings (environment prefix ``LIFELINE_INGEST_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from lifeline.kit.config import ServiceSettings


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFELINE_INGEST_", extra="ignore")
    service_name: ClassVar[str] = "ingest"

    # What this process does: "front" (REST, gRPC, MQTT ways in; reads) and/or "storage" (the READINGS
    # consumer and no-data tracking). Both by default; apart, each scales and gets a core of its own.
    roles: str = "front,storage"
    http_port: int = 8101
    grpc_port: int = 9101
    # Sensor registry: a catalogue file until the assets service feeds it with change events.
    sensors_file: Path | None = None
    quantities_file: Path | None = None
    max_batch: int = 5000
    max_body_bytes: int = 4 * 1024 * 1024
    max_future_skew_s: float = 300.0
    retention_days: float = 400.0
    # A sensor is offline when it misses `offline_factor` reporting intervals.
    offline_factor: float = 3.0
    status_check_interval_s: float = 10.0
    consumer_batch: int = 200
    # How long the storing consumer waits to fill a batch (storage latency, not acknowledgement latency).
    consumer_linger_s: float = 0.25
    dedup_per_sensor: int = 128
    publish_timeout_s: float = 5.0
    retry_after_s: int = 2

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: str) -> str:
        roles = {r.strip() for r in v.split(",") if r.strip()}
        if not roles or not roles <= {"front", "storage"}:
            raise ValueError(f"roles must be front, storage or both, got {v!r}")
        return ",".join(sorted(roles))

    def has_role(self, role: str) -> bool:
        """Whether this process plays `role` (front or storage)."""
        return role in self.roles.split(",")

    # MQTT devices get their results in this language (they send no Accept-Language).
    mqtt_language: str = "zh-CN"
