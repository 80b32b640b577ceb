"""Assets settings (environment prefix ``LIFELINE_ASSETS_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from lifeline.kit.config import ServiceSettings


class AssetsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFELINE_ASSETS_", extra="ignore")
    service_name: ClassVar[str] = "assets"

    http_port: int = 8102
    grpc_port: int = 9102
    # An operator's quantity catalogue overlaid on the packaged one (sensor quantities are checked against it).
    quantities_file: Path | None = None
    max_page: int = 1000
    # The instance's ingest gRPC address (its default port), asked when each sensor last reported (coverage).
    ingest_grpc: str = "127.0.0.1:9101"
    # How often the assets service checks that the census on the bus is marked complete (and writes it
    # whole when it is not, e.g. after nats-server lost its store).
    census_check_s: float = 60.0
