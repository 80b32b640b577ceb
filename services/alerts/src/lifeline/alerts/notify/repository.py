"""All queries of notifications (SQLAlchemy Core on the caller's session; nothing commits here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .models import webhook_attempts, webhook_deliveries, webhooks

W, D, A = webhooks, webhook_deliveries, webhook_attempts


async def _conn(session: AsyncSession) -> AsyncConnection:
    return await session.connection()


async def insert_webhook(*, session: AsyncSession, values: dict[str, Any]) -> None:
    await (await _conn(session)).execute(sa.insert(W).values(**values))


async def get_webhook(*, session: AsyncSession, webhook_id: str) -> Any:
    return (await (await _conn(session)).execute(sa.select(W).where(W.c.id == webhook_id))).first()


async def list_webhooks(*, session: AsyncSession, enabled_only: bool = False) -> Sequence[Any]:
    q = sa.select(W).order_by(W.c.created_ms, W.c.id)
    if enabled_only:
        q = q.where(W.c.enabled)
    return (await (await _conn(session)).execute(q)).all()


async def update_webhook(*, session: AsyncSession, webhook_id: str, version: int, values: dict[str, Any]) -> bool:
    """Apply `values` if the subscription is still at `version` (optimistic concurrency)."""
    result = await (await _conn(session)).execute(
        sa.update(W).where(W.c.id == webhook_id, W.c.version == version).values(**values, version=version + 1)
    )
    return bool(result.rowcount)


async def delete_webhook(*, session: AsyncSession, webhook_id: str) -> None:
    conn = await _conn(session)
    await conn.execute(sa.delete(A).where(A.c.webhook_id == webhook_id))
    await conn.execute(sa.delete(D).where(D.c.webhook_id == webhook_id))
    await conn.execute(sa.delete(W).where(W.c.id == webhook_id))


async def recorded_events(*, session: AsyncSession, event_ids: Sequence[str]) -> set[tuple[str, str]]:
    """(webhook id, event id) pairs already recorded for these events."""
    if not event_ids:
        return set()
    rows = await (await _conn(session)).execute(
        sa.select(D.c.webhook_id, D.c.event_id).where(D.c.event_id.in_(list(set(event_ids))))
    )
    return {(r.webhook_id, r.event_id) for r in rows}


async def insert_deliveries(*, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if rows:
        await (await _conn(session)).execute(sa.insert(D), rows)


async def claim_due(*, session: AsyncSession, now_ms: int, lease_ms: int, limit: int) -> list[dict[str, Any]]:
    """Lease the due deliveries that head their alert's queue (no earlier pending one) on enabled webhooks."""
    earlier = D.alias("earlier")
    blocked = (
        sa.select(sa.literal(1))
        .where(
            earlier.c.webhook_id == D.c.webhook_id,
            earlier.c.alert_id == D.c.alert_id,
            earlier.c.status == "pending",
            earlier.c.alert_seq < D.c.alert_seq,
        )
        .exists()
    )
    q = (
        sa.select(D, W.c.url, W.c.secret)
        .join(W, W.c.id == D.c.webhook_id)
        .where(D.c.status == "pending", D.c.next_attempt_ms <= now_ms, W.c.enabled, ~blocked)
        .order_by(D.c.next_attempt_ms, D.c.created_ms)
        .limit(limit)
    )
    conn = await _conn(session)
    if conn.dialect.name == "postgresql":
        # Replicas share the table: each leases rows no other replica holds.
        q = q.with_for_update(of=D, skip_locked=True)
    rows = [dict(r._mapping) for r in (await conn.execute(q)).all()]
    if rows:
        # The lease: nobody else takes these until the attempt is recorded or the lease runs out.
        await conn.execute(
            sa.update(D).where(D.c.id.in_([r["id"] for r in rows])).values(next_attempt_ms=now_ms + lease_ms)
        )
    return rows


async def record_attempt(
    *, session: AsyncSession, delivery_id: str, delivery: dict[str, Any], attempt: dict[str, Any]
) -> None:
    conn = await _conn(session)
    await conn.execute(sa.update(D).where(D.c.id == delivery_id).values(**delivery))
    await conn.execute(sa.insert(A).values(delivery_id=delivery_id, **attempt))


async def get_delivery(*, session: AsyncSession, delivery_id: str) -> Any:
    return (await (await _conn(session)).execute(sa.select(D).where(D.c.id == delivery_id))).first()


async def update_delivery(*, session: AsyncSession, delivery_id: str, values: dict[str, Any]) -> None:
    await (await _conn(session)).execute(sa.update(D).where(D.c.id == delivery_id).values(**values))


async def list_deliveries(
    *, session: AsyncSession, webhook_id: str, status: str | None, after: tuple[int, str] | None, limit: int
) -> Sequence[Any]:
    """Newest first; `after` is the (created_ms, id) of the last row of the previous page."""
    q = sa.select(D).where(D.c.webhook_id == webhook_id)
    if status:
        q = q.where(D.c.status == status)
    if after is not None:
        q = q.where(sa.tuple_(D.c.created_ms, D.c.id) < sa.tuple_(*after))
    q = q.order_by(D.c.created_ms.desc(), D.c.id.desc()).limit(limit)
    return (await (await _conn(session)).execute(q)).all()


async def attempts_of(*, session: AsyncSession, delivery_ids: Sequence[str]) -> Sequence[Any]:
    if not delivery_ids:
        return []
    q = sa.select(A).where(A.c.delivery_id.in_(list(delivery_ids))).order_by(A.c.delivery_id, A.c.n)
    return (await (await _conn(session)).execute(q)).all()


async def delivery_counts(*, session: AsyncSession, webhook_id: str) -> dict[str, int]:
    q = sa.select(D.c.status, sa.func.count()).where(D.c.webhook_id == webhook_id).group_by(D.c.status)
    return {status: int(n) for status, n in (await (await _conn(session)).execute(q)).all()}
