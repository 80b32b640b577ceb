"""Webhook subscriptions and their deliveries: matching events, the delivery log, sending with retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from google.protobuf.json_format import MessageToDict

from lifeline.kit import i18n
from lifeline.kit.api import bad_page_token, decode_page_token, encode_page_token, require_any_role, require_visible
from lifeline.kit.audit import audit
from lifeline.kit.auth import Principal, region_contains
from lifeline.kit.db import Database
from lifeline.kit.problems import ProblemError
from lifeline.v1 import alerts_pb2

from ..messages import EVENT_KIND, FACILITY_KIND, FACILITY_KIND_NAME, LEVEL_NAME
from ..service import _invalid, _not_found
from . import repository
from .settings import NotifySettings

i18n.register(
    {
        "notify.forbidden": {
            "zh-CN": "无权访问区域 {region} 的通知订阅",
            "en": "not allowed to access notification subscriptions of region {region}",
        },
        "notify.bad_url": {
            "zh-CN": "应为 http 或 https 地址（含主机名，不含用户名和密码）",
            "en": "an http or https URL with a host and without user name or password is required",
        },
        "notify.bad_domain": {
            "zh-CN": "未知的设施类别 {domain}（可选：{allowed}）",
            "en": "unknown facility kind {domain} (one of: {allowed})",
        },
        "notify.conflict": {
            "zh-CN": "订阅 {id} 刚被他人修改，请重新读取后再试",
            "en": "subscription {id} was changed concurrently; read it again and retry",
        },
        "notify.not_dead": {
            "zh-CN": "投递 {id} 的状态是“{status}”，只有已放弃的投递可以重新投递",
            "en": "delivery {id} is {status}; only given-up (dead) deliveries can be redelivered",
        },
    }
)

WRITER_ROLES = ("operator", "admin")
EVENT_KIND_NAME = {v: k for k, v in EVENT_KIND.items()}
MAX_PAGE = 500
SIGNATURE_HEADER = "Lifeline-Signature"
TIMESTAMP_HEADER = "Lifeline-Timestamp"
EVENT_ID_HEADER = "Lifeline-Event-Id"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: HMAC-SHA256 over ``<timestamp>.<body>`` (the timestamp stops replays)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def event_body(event_id: str, event: alerts_pb2.AlertEvent) -> dict[str, Any]:
    """The JSON a receiver gets (webhook body, SSE data): the event id, its kind and the event itself."""
    return {
        "id": event_id,
        "kind": EVENT_KIND_NAME.get(event.kind, "unspecified"),
        "region": event.alert.region,
        "alert_id": event.alert.id,
        "event": MessageToDict(event, preserving_proto_field_name=True),
    }


def event_id_of(headers: dict[str, str] | None, event: alerts_pb2.AlertEvent) -> str:
    """The outbox event id (the message id JetStream deduplicates on), as the core publishes it."""
    return (headers or {}).get("Nats-Msg-Id") or f"alert:{event.alert.id}:{event.entry.seq}"


def matches(webhook: dict[str, Any], event: alerts_pb2.AlertEvent) -> bool:
    """Whether a subscription wants this event (suppressed alerts notify nobody: silences and inhibition)."""
    a = event.alert
    return (
        not a.suppressed
        and region_contains(webhook["region"], a.region)
        and (not webhook["kinds"] or EVENT_KIND_NAME.get(event.kind) in webhook["kinds"])
        and (not webhook["levels"] or LEVEL_NAME.get(a.level) in webhook["levels"])
        and (not webhook["domains"] or FACILITY_KIND_NAME.get(a.facility_kind) in webhook["domains"])
    )


def _check_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise _invalid("url", "notify.bad_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.userinfo:
        raise _invalid("url", "notify.bad_url")
    return str(parsed)


def _check_domains(domains: Sequence[str]) -> list[str]:
    for d in domains:
        domain_number("domains", d)
    return list(dict.fromkeys(domains))


def domain_number(field: str, domain: str) -> int:
    """The FacilityKind number of a domain name; 422 problem if there is none."""
    if domain not in FACILITY_KIND:
        raise _invalid(field, "notify.bad_domain", domain=domain, allowed=", ".join(sorted(FACILITY_KIND)))
    return FACILITY_KIND[domain]


def _public(row: Any, **extra: Any) -> dict[str, Any]:
    doc = dict(row._mapping)
    doc.pop("secret", None)
    return doc | extra


class Notifications:
    """Webhook subscriptions, the deliveries they get, and sending those deliveries."""

    def __init__(self, *, db: Database, settings: NotifySettings, region: str) -> None:
        self.db = db
        self.settings = settings
        self.region = region
        self.clock: Callable[[], int] = now_ms
        # Set by the worker: wakes it when new deliveries are due now.
        self.on_due: Callable[[], None] = lambda: None

    # --- subscriptions -------------------------------------------------------------------------------

    def _visible(self, region: str, principal: Principal, *, action: str, resource: str, source: str | None) -> None:
        require_visible(principal, region, detail="notify.forbidden", action=action, resource=resource, source=source)

    async def create_webhook(
        self, *, webhook_in: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        region = webhook_in.get("region") or principal.region or self.region
        self._visible(region, principal, action="webhook.create", resource="webhooks", source=source)
        secret = webhook_in.get("secret") or secrets.token_urlsafe(32)
        now = self.clock()
        doc = {
            "id": str(uuid.uuid4()),
            "name": webhook_in["name"],
            "url": _check_url(webhook_in["url"]),
            "secret": secret,
            "region": region,
            "kinds": list(dict.fromkeys(webhook_in.get("kinds") or [])),
            "levels": list(dict.fromkeys(str(v) for v in webhook_in.get("levels") or [])),
            "domains": _check_domains(webhook_in.get("domains") or []),
            "enabled": webhook_in.get("enabled", True),
            "version": 1,
            "created_by": principal.subject,
            "created_ms": now,
            "updated_ms": now,
        }
        async with self.db.transaction() as session:
            await repository.insert_webhook(session=session, values=doc)
        audit(
            principal=principal, action="webhook.create", resource=f"webhooks/{doc['id']}", region=region, source=source
        )
        return doc | {"deliveries": {}}

    async def _get(self, session: Any, webhook_id: str, principal: Principal, action: str, source: str | None) -> Any:
        row = await repository.get_webhook(session=session, webhook_id=webhook_id)
        if row is None:
            raise _not_found("webhook", webhook_id)
        self._visible(row.region, principal, action=action, resource=f"webhooks/{webhook_id}", source=source)
        return row

    async def get_webhook(self, *, webhook_id: str, principal: Principal, source: str | None = None) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        async with self.db.transaction(readonly=True) as session:
            row = await self._get(session, webhook_id, principal, "webhook.read", source)
            counts = await repository.delivery_counts(session=session, webhook_id=webhook_id)
        return _public(row, deliveries=counts)

    async def list_webhooks(self, *, principal: Principal) -> list[dict[str, Any]]:
        require_any_role(principal, WRITER_ROLES)
        async with self.db.transaction(readonly=True) as session:
            rows = await repository.list_webhooks(session=session)
        return [_public(r) for r in rows if principal.region is not None and principal.sees(r.region)]

    async def update_webhook(
        self, *, webhook_id: str, changes: dict[str, Any], principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        require_any_role(principal, WRITER_ROLES)
        expected = changes.pop("expected_version", None)
        values = {k: v for k, v in changes.items() if v is not None}
        if "url" in values:
            values["url"] = _check_url(values["url"])
        if "domains" in values:
            values["domains"] = _check_domains(values["domains"])
        if "levels" in values:
            values["levels"] = list(dict.fromkeys(str(v) for v in values["levels"]))
        if "kinds" in values:
            values["kinds"] = list(dict.fromkeys(values["kinds"]))
        if "region" in values:
            self._visible(values["region"], principal, action="webhook.update", resource="webhooks", source=source)
        async with self.db.transaction() as session:
            row = await self._get(session, webhook_id, principal, "webhook.update", source)
            if expected is not None and expected != row.version:
                raise ProblemError(409, detail="notify.conflict", params={"id": webhook_id})
            values["updated_ms"] = self.clock()
            if not await repository.update_webhook(
                session=session, webhook_id=webhook_id, version=row.version, values=values
            ):
                raise ProblemError(409, detail="notify.conflict", params={"id": webhook_id})
            row = await repository.get_webhook(session=session, webhook_id=webhook_id)
            counts = await repository.delivery_counts(session=session, webhook_id=webhook_id)
        audit(
            principal=principal,
            action="webhook.update",
            resource=f"webhooks/{webhook_id}",
            region=row.region,
            source=source,
            fields=sorted(k for k in values if k != "secret"),
        )
        # Pending deliveries of a webhook that was just enabled are due again.
        self.on_due()
        return _public(row, deliveries=counts) | ({"secret": values["secret"]} if "secret" in values else {})

    async def delete_webhook(self, *, webhook_id: str, principal: Principal, source: str | None = None) -> None:
        require_any_role(principal, WRITER_ROLES)
        async with self.db.transaction() as session:
            row = await self._get(session, webhook_id, principal, "webhook.delete", source)
            await repository.delete_webhook(session=session, webhook_id=webhook_id)
        audit(
            principal=principal,
            action="webhook.delete",
            resource=f"webhooks/{webhook_id}",
            region=row.region,
            source=source,
        )

    # --- the delivery log ---------------------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        webhook_id: str,
        principal: Principal,
        status: str | None = None,
        limit: int = 100,
        page_token: str | None = None,
        source: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        require_any_role(principal, WRITER_ROLES)
        after = None
        if page_token:
            created, _, last_id = decode_page_token(page_token).partition("/")
            if not created.isdigit() or not last_id:
                raise bad_page_token()
            after = (int(created), last_id)
        async with self.db.transaction(readonly=True) as session:
            await self._get(session, webhook_id, principal, "webhook.deliveries", source)
            rows = await repository.list_deliveries(
                session=session, webhook_id=webhook_id, status=status, after=after, limit=limit + 1
            )
            page = rows[:limit]
            attempts = await repository.attempts_of(session=session, delivery_ids=[r.id for r in page])
        log: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            log.setdefault(a.delivery_id, []).append(dict(a._mapping))
        items = [
            dict(r._mapping)
            | {
                "attempt_log": log.get(r.id, []),
                "next_attempt_ms": r.next_attempt_ms if r.status == "pending" else None,
            }
            for r in page
        ]
        token = encode_page_token(f"{page[-1].created_ms}/{page[-1].id}") if len(rows) > limit else None
        return items, token

    async def redeliver(
        self, *, webhook_id: str, delivery_id: str, principal: Principal, source: str | None = None
    ) -> dict[str, Any]:
        """Give a dead delivery a new round of attempts, now."""
        require_any_role(principal, WRITER_ROLES)
        now = self.clock()
        async with self.db.transaction() as session:
            hook = await self._get(session, webhook_id, principal, "webhook.redeliver", source)
            row = await repository.get_delivery(session=session, delivery_id=delivery_id)
            if row is None or row.webhook_id != webhook_id:
                raise _not_found("delivery", delivery_id)
            if row.status != "dead":
                raise ProblemError(409, detail="notify.not_dead", params={"id": delivery_id, "status": row.status})
            values = {"status": "pending", "attempts": 0, "scheduled_ms": now, "next_attempt_ms": now}
            await repository.update_delivery(session=session, delivery_id=delivery_id, values=values)
        audit(
            principal=principal,
            action="webhook.redeliver",
            resource=f"webhooks/{webhook_id}/deliveries/{delivery_id}",
            region=hook.region,
            source=source,
        )
        self.on_due()
        return dict(row._mapping) | values | {"attempt_log": []}

    # --- recording deliveries (the consumer) --------------------------------------------------------

    async def record(self, events: Sequence[tuple[str, alerts_pb2.AlertEvent]]) -> int:
        """One delivery per (event, matching subscription) in one transaction; a repeated event adds nothing."""
        # Matching reads only (no SQLite write lock): most batches match no subscription at all.
        async with self.db.transaction(readonly=True) as session:
            hooks = [dict(r._mapping) for r in await repository.list_webhooks(session=session, enabled_only=True)]
        wanted = [(hook["id"], eid, event) for eid, event in events for hook in hooks if matches(hook, event)]
        if not wanted:
            return 0
        now = self.clock()
        bodies: dict[str, dict[str, Any]] = {}
        rows = []
        async with self.db.transaction() as session:
            done = await repository.recorded_events(session=session, event_ids=[eid for _, eid, _ in wanted])
            for hook_id, event_id, event in wanted:
                if (hook_id, event_id) in done:
                    continue
                done.add((hook_id, event_id))
                body = bodies.setdefault(event_id, event_body(event_id, event))
                rows.append(
                    {
                        "id": str(uuid.uuid4()),
                        "webhook_id": hook_id,
                        "event_id": event_id,
                        "alert_id": event.alert.id,
                        "alert_seq": event.entry.seq,
                        "kind": body["kind"],
                        "body": body,
                        "status": "pending",
                        "attempts": 0,
                        "total_attempts": 0,
                        "created_ms": now,
                        "scheduled_ms": now,
                        "next_attempt_ms": now,
                        "delivered_ms": None,
                        "last_status_code": None,
                        "last_error": None,
                    }
                )
            await repository.insert_deliveries(session=session, rows=rows)
        if rows:
            self.on_due()
        return len(rows)

    # --- sending (the worker) -----------------------------------------------------------------------

    def backoff_s(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`: exponential, capped, with jitter so retries spread out."""
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_initial_s * 2 ** min(attempts - 1, 30))
        jittered: float = delay * random.uniform(0.5, 1.0)
        return jittered

    async def deliver_due(self, client: Callable[[], httpx.AsyncClient]) -> int:
        """Send every delivery that is due now and heads its alert's queue; return how many were tried.

        ``client`` gives the HTTP client, called only when a delivery was claimed (see DeliveryWorker)."""
        s = self.settings
        now = self.clock()
        lease_ms = int((s.timeout_s + 30) * 1000)
        async with self.db.transaction() as session:
            claimed = await repository.claim_due(session=session, now_ms=now, lease_ms=lease_ms, limit=s.concurrency)
        if claimed:
            http = client()
            await asyncio.gather(*(self._attempt(http, d) for d in claimed))
        return len(claimed)

    async def _attempt(self, client: httpx.AsyncClient, d: dict[str, Any]) -> None:
        s = self.settings
        body = json.dumps(d["body"], ensure_ascii=False, separators=(",", ":")).encode()
        n = d["total_attempts"] + 1
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "lifeline-alerts-webhook/1",
            EVENT_ID_HEADER: d["event_id"],
            "Lifeline-Event-Kind": d["kind"],
            "Lifeline-Delivery-Id": d["id"],
            "Lifeline-Delivery-Attempt": str(n),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(d["secret"], timestamp, body),
        }
        started = time.perf_counter()
        at = self.clock()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await client.post(d["url"], content=body, headers=headers, timeout=s.timeout_s)
            status_code = response.status_code
            if not response.is_success:
                error = f"HTTP {status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        duration_ms = int((time.perf_counter() - started) * 1000)
        done = self.clock()
        attempts = d["attempts"] + 1
        if error is None:
            outcome, values = "delivered", {"status": "delivered", "delivered_ms": done}
        elif attempts >= s.max_attempts or done - d["scheduled_ms"] >= s.max_age_s * 1000:
            outcome, values = "dead", {"status": "dead"}
        else:
            outcome = "retry"
            values = {"status": "pending", "next_attempt_ms": done + int(self.backoff_s(attempts) * 1000)}
        values |= {"attempts": attempts, "total_attempts": n, "last_status_code": status_code, "last_error": error}
        attempt = {
            "n": n,
            "webhook_id": d["webhook_id"],
            "at_ms": at,
            "duration_ms": duration_ms,
            "status_code": status_code,
            "error": error,
            "outcome": outcome,
        }
        async with self.db.transaction() as session:
            await repository.record_attempt(session=session, delivery_id=d["id"], delivery=values, attempt=attempt)
        if outcome != "retry":
            # The next event of this alert may go now.
            self.on_due()
