"""Ingest settings (environment prefix ``LIFELINE_INGEST_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
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
    # Where the sensor registry comes from: "assets" (the census the instance's assets service keeps on
    # the bus) or "file" (`sensors_file`). Unset: "file" if a sensors file is given, else "assets" — a
    # city instance runs assets, so that is the default there.
    registry: Literal["assets", "file"] | None = None
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
    # SQLite page cache of the persisting consumer's connection (its own: the others keep SQLite's
    # default 2 MiB): room for the index pages the inserts touch (about one per sensor); 2 MiB holds
    # ~500 sensors' worth.
    sqlite_cache_mib: int = Field(default=16, ge=2)
    # The storing consumer starts a transaction at most this often, letting messages accumulate in between
    # (storage latency, not acknowledgement latency); a transaction that took longer is followed at once.
    consumer_linger_s: float = 0.25
    # Recent readings per sensor the front door answers duplicate/conflict for without storage.
    dedup_per_sensor: int = Field(default=128, ge=2)
    publish_timeout_s: float = 5.0
    # JetStream publishes of the front door waiting for their ack at once; requests arriving meanwhile
    # share the next message (group commit), so more in flight means smaller, more numerous messages.
    publish_max_in_flight: int = Field(default=1, ge=1)
    retry_after_s: int = 2

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: str) -> str:
        roles = {r.strip() for r in v.split(",") if r.strip()}
        if not roles or not roles <= {"front", "storage"}:
            raise ValueError(f"roles must be front, storage or both, got {v!r}")
        return ",".join(sorted(roles))

    @model_validator(mode="after")
    def _registry_source(self) -> IngestSettings:
        if self.registry is None:
            self.registry = "file" if self.sensors_file is not None else "assets"
        elif self.registry == "file" and self.sensors_file is None:
            raise ValueError("registry 'file' needs sensors_file (LIFELINE_INGEST_SENSORS_FILE)")
        elif self.registry == "assets" and self.sensors_file is not None:
            raise ValueError("registry 'assets' takes no sensors_file; unset one of them")
        return self

    def has_role(self, role: str) -> bool:
        """Whether this process plays `role` (front or storage)."""
        return role in self.roles.split(",")

    # MQTT devices get their results in this language (they send no Accept-Language).
    mqtt_language: str = "zh-CN"
