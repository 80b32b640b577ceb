"""lifeline.kit.config: settings from the environment, per-service prefixes, refusal of default secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from lifeline.kit.config import InstanceSettings, ServiceSettings, Tier


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFELINE_INGEST_", extra="ignore")
    service_name = "ingest"
    max_batch: int = 5000


def test_instance_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_TIER", "province")
    monkeypatch.setenv("LIFELINE_REGION", "340000")
    monkeypatch.setenv("LIFELINE_PARENT_URL", "grpc://national.example:9400")
    s = InstanceSettings()
    assert (s.tier, s.region, s.parent_url) == (Tier.PROVINCE, "340000", "grpc://national.example:9400")


@pytest.mark.parametrize("region", ["34010", "3401000", "abcdef", ""])
def test_region_must_be_six_digits(region: str) -> None:
    with pytest.raises(ValidationError, match="six digits"):
        InstanceSettings(region=region)


def test_default_secret_refused_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_DEV", "false")
    with pytest.raises(ValidationError, match="development default"):
        InstanceSettings()
    monkeypatch.setenv("LIFELINE_OIDC_CLIENT_SECRET", "a-real-secret-from-the-vault")
    assert InstanceSettings().dev_mode is False
    monkeypatch.setenv("LIFELINE_NATS_PASSWORD", "changeme")
    with pytest.raises(ValidationError, match="NATS_PASSWORD"):
        InstanceSettings()


def test_service_prefix_and_default_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIFELINE_INGEST_MAX_BATCH", "123")
    monkeypatch.setenv("LIFELINE_MAX_BATCH", "999")  # another prefix: ignored
    s = IngestSettings()
    assert s.max_batch == 123
    instance = InstanceSettings(data_dir=tmp_path)
    assert s.database_url_for(instance) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/ingest.db"
    monkeypatch.setenv("LIFELINE_INGEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1/ingest")
    assert IngestSettings().database_url_for(instance) == "postgresql+asyncpg://postgres@127.0.0.1/ingest"
