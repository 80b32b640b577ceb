"""Settings from the environment (pydantic-settings), with safe development defaults.

Instance-wide settings use the prefix ``LIFELINE_``; each service has its own class with the prefix
``LIFELINE_<SERVICE>_`` (e.g. ``LIFELINE_INGEST_DATABASE_URL``). Settings objects are created once at
start-up and passed in; nothing reads the environment at import time.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REGION_RE = re.compile(r"^\d{6}$")
NATIONAL_REGION = "100000"
# Secrets that ship in the repository for development; refused outside development mode.
DEV_SECRETS = frozenset({"", "dev-secret", "changeme", "lifeline-dev"})


class Tier(StrEnum):
    CITY = "city"
    PROVINCE = "province"
    NATIONAL = "national"


def validate_region(code: str) -> str:
    """Return a GB/T 2260 region code if it has six digits, else raise ValueError."""
    if not REGION_RE.match(code):
        raise ValueError(f"region code must be six digits (GB/T 2260), got {code!r}")
    return code


class InstanceSettings(BaseSettings):
    """Who this instance is and where the shared infrastructure lives."""

    model_config = SettingsConfigDict(env_prefix="LIFELINE_", extra="ignore")

    tier: Tier = Tier.CITY
    region: str = "340100"
    region_name: str = "合肥市"
    parent_url: str | None = None
    dev_mode: bool = Field(default=True, validation_alias="LIFELINE_DEV")
    data_dir: Path = Path("var")
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    oidc_issuer: str = "http://127.0.0.1:8180/realms/lifeline"
    oidc_audience: str = "lifeline"
    oidc_client_id: str = "lifeline-services"
    oidc_client_secret: str = "dev-secret"
    otlp_endpoint: str | None = None
    # Share of new traces recorded (requests that arrive with a traceparent follow their caller).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    log_level: str = "INFO"
    log_json: bool = True
    language: str = "zh-CN"

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        return validate_region(v)

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> InstanceSettings:
        if not self.dev_mode and self.oidc_client_secret in DEV_SECRETS:
            raise ValueError(
                "LIFELINE_OIDC_CLIENT_SECRET is a development default; set a real secret or run with LIFELINE_DEV=true"
            )
        if not self.dev_mode and self.nats_password is not None and self.nats_password in DEV_SECRETS:
            raise ValueError("LIFELINE_NATS_PASSWORD is a development default")
        return self


class ServiceSettings(BaseSettings):
    """Base for one service's settings; subclasses set ``service_name`` and ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore")
    service_name: ClassVar[str] = "service"

    database_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    # Several processes of this service on one host share its HTTP and gRPC ports (SO_REUSEPORT, the
    # kernel spreads connections among them), e.g. two of ingest's front doors on a host of 2+ cores.
    # Every process on the port must set it; off, a second server on a taken port fails to start.
    reuse_port: bool = False

    def database_url_for(self, instance: InstanceSettings) -> str:
        """The configured database URL, or a SQLite file of this service under the data directory."""
        if self.database_url:
            return self.database_url
        path = (instance.data_dir / f"{self.service_name}.db").resolve()
        return f"sqlite+aiosqlite:///{path}"
