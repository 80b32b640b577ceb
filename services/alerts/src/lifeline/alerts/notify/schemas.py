"""REST models of webhook subscriptions and their delivery log (Create / Update / Public)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lifeline.kit.catalogue import Level

# The kinds a subscriber can ask for. "unsuppressed" is an alert coming back from a silence or an inhibition
# (notified again like a new one); "updated" and "suppressed" never reach webhooks: a suppressed alert is quiet.
EventKind = Literal["raised", "level_changed", "transitioned", "overdue", "cleared", "closed", "unsuppressed"]
DeliveryStatus = Literal["pending", "delivered", "dead"]
REGION_PATTERN = r"^\d{6}$"


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, examples=["短信网关"])
    # http(s) URL, checked by the service (so the problem reads in the caller's language).
    url: str = Field(max_length=2000, examples=["https://sms.example.com/lifeline"])
    # HMAC-SHA256 key of the signature header; generated (and returned once) when not given.
    secret: str | None = Field(default=None, min_length=16, max_length=200)
    # Events of this region and its descendants; default the caller's region.
    region: str | None = Field(default=None, pattern=REGION_PATTERN)
    kinds: list[EventKind] = Field(default_factory=list, max_length=7)
    levels: list[Level] = Field(default_factory=list, max_length=4)
    # Facility kinds (gas, water_supply, ...), checked by the service.
    domains: list[str] = Field(default_factory=list, max_length=16)
    enabled: bool = True


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, max_length=2000)
    secret: str | None = Field(default=None, min_length=16, max_length=200)
    region: str | None = Field(default=None, pattern=REGION_PATTERN)
    kinds: list[EventKind] | None = Field(default=None, max_length=7)
    levels: list[Level] | None = Field(default=None, max_length=4)
    domains: list[str] | None = Field(default=None, max_length=16)
    enabled: bool | None = None
    expected_version: int | None = None


class WebhookPublic(BaseModel):
    id: str
    name: str
    url: str
    region: str
    kinds: list[str]
    levels: list[str]
    domains: list[str]
    enabled: bool
    version: int
    created_by: str
    created_ms: int
    updated_ms: int
    # Only in the answer to a create (or a secret change): it is never shown again.
    secret: str | None = None
    # Deliveries by status.
    deliveries: dict[str, int] = Field(default_factory=dict)


class WebhookList(BaseModel):
    webhooks: list[WebhookPublic]


class AttemptPublic(BaseModel):
    n: int
    at_ms: int
    duration_ms: int
    status_code: int | None
    error: str | None
    outcome: str


class DeliveryPublic(BaseModel):
    id: str
    webhook_id: str
    event_id: str
    alert_id: str
    alert_seq: int
    kind: str
    status: DeliveryStatus
    attempts: int
    total_attempts: int
    created_ms: int
    next_attempt_ms: int | None
    delivered_ms: int | None
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[AttemptPublic]


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryPublic]
    next_page_token: str | None = None
