"""Notification settings (environment prefix ``LIFELINE_ALERTS_NOTIFY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NotifySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIFELINE_ALERTS_NOTIFY_", extra="ignore")

    # Webhook delivery: an attempt waits at most `timeout_s`; failures back off exponentially from
    # `backoff_initial_s` up to `backoff_max_s` (with jitter), and a delivery is given up ("dead") after
    # `max_attempts` attempts or `max_age_s` seconds, whichever comes first.
    timeout_s: float = Field(default=10.0, gt=0)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    max_age_s: float = Field(default=86_400.0, gt=0)
    # How often the worker looks for due deliveries when nothing wakes it; how many it sends at once.
    poll_interval_s: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1)
    # Live streams: a watcher that falls this far behind is dropped (it reconnects and resumes);
    # SSE sends a comment line this often so proxies keep the connection; each replica keeps the
    # last `replay_events` events (read back from the stream `replay_window_s` at start) for resumes.
    watcher_queue: int = Field(default=1000, ge=1)
    heartbeat_s: float = Field(default=15.0, gt=0)
    replay_events: int = Field(default=5000, ge=0)
    replay_window_s: float = Field(default=600.0, ge=0)
