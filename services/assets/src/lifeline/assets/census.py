"""Assets' side of the census on the bus (lifeline.kit.census): every entity version, and its completeness.

Each change of an entity goes through the outbox twice, in the change's transaction: its event on
``events.assets.<entity>.<region>`` (EVENTS: what happened, for 30 days) and its census entry on
``$KV.census.<entity>.<region>.<id>`` (KV_census: the latest version, kept for good) — one payload.

:class:`CensusKeeper` makes sure the census on the bus is whole: when the marker of this region's census
is missing (a first start, an instance that had assets before the census was on the bus, a nats-server
whose store was lost), it writes every entity's current version and then the marker, all in one
transaction through the outbox, so the marker reaches the bus only after the entries before it. It looks
again every ``interval_s`` seconds (and writes nothing while a marker it wrote is still in the outbox).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors
from sqlalchemy import and_, select, text

from lifeline.kit.bus import Bus, BusUnavailable
from lifeline.kit.census import census_complete, census_subject, ready_subject
from lifeline.kit.db import Database
from lifeline.kit.outbox import enqueue_many, outbox_table
from lifeline.kit.runtime import TaskPart
from lifeline.kit.tasks import raise_if_cancelled
from lifeline.v1 import assets_pb2

from .messages import change_event
from .models import TABLES, history_table

log = logging.getLogger(__name__)

Event = tuple[str, Any, str]  # (subject, payload, event id) for the outbox


def change_events(
    entity: str, key: str, change: str, after: dict[str, Any], actor: str, reason: str | None
) -> list[Event]:
    """The outbox rows of one entity version: its change event and its census entry (one payload)."""
    payload = change_event(entity, change, after, actor, reason)
    return [
        (f"events.assets.{entity}.{after['region']}", payload, f"{entity}:{key}:{after['version']}"),
        census_entry(entity, key, after, payload),
    ]


def census_entry(entity: str, key: str, after: dict[str, Any], payload: Any) -> Event:
    """The census entry of one entity version (``payload``: its change event)."""
    return census_subject(entity, after["region"], key), payload, f"census:{entity}:{key}:{after['version']}"


class CensusKeeper(TaskPart):
    """Writes the whole census, then its marker, whenever the marker of ``region`` is missing on the bus."""

    task_name = "assets-census-keeper"

    def __init__(self, *, bus: Bus, db: Database, region: str, interval_s: float = 60.0) -> None:
        self.bus = bus
        self.db = db
        self.region = region
        self.interval_s = interval_s
        self.rewrites = 0  # observable for tests

    async def _run(self) -> None:
        while True:
            raise_if_cancelled()
            try:
                await self.bus.wait_ready(timeout=3600)
                if not await census_complete(self.bus, self.region):
                    await self.rewrite()
            except asyncio.CancelledError:
                raise
            except (BusUnavailable, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("census keeper: bus not available: %r", exc)
            except Exception:
                log.exception("census keeper: rewriting the census failed")
            await asyncio.sleep(self.interval_s)

    async def rewrite(self) -> dict[str, int] | None:
        """Put every entity's current version, then the marker, in the outbox (one transaction).

        None (nothing written) while an earlier rewrite's marker still waits in the outbox: the relay
        has yet to publish it (NATS away, or a large census still going out)."""
        now_ms = int(time.time() * 1000)
        counts: dict[str, int] = {}
        events: list[Event] = []
        async with self.db.transaction() as session:
            conn = await session.connection()
            o = outbox_table.c
            marker_unsent = select(o.seq).where(o.subject == ready_subject(self.region), o.sent_at.is_(None))
            if (await conn.execute(marker_unsent.limit(1))).first() is not None:
                return None
            if conn.dialect.name == "postgresql":
                # No change may commit between this read and these rows: a change committed meanwhile
                # would reach the bus before the older version written here, which would then be the
                # census's last word on it. (SQLite: the transaction holds the write lock already.)
                names = ", ".join(table.name for table, _ in TABLES.values())
                await conn.execute(text(f"LOCK TABLE {names} IN SHARE MODE"))
            h = history_table.c
            for entity, (table, key_col) in TABLES.items():
                # The history row of each current version: the event exactly as it was first written.
                rows = await conn.execute(
                    select(table.c[key_col], h.change, h.actor, h.reason, h.after).join(
                        history_table,
                        and_(h.entity == entity, h.entity_id == table.c[key_col], h.version == table.c.version),
                    )
                )
                n = 0
                for key, change, actor, reason, after in rows:
                    payload = change_event(entity, change, after, actor, reason)
                    subject, _, event_id = census_entry(entity, key, after, payload)
                    # Another id than the change's own census row: that one may still be in the outbox.
                    events.append((subject, payload, f"{event_id}:r{now_ms}"))
                    n += 1
                counts[entity] = n
            marker = assets_pb2.CensusComplete(region=self.region, at_ms=now_ms, entities=counts)
            events.append((ready_subject(self.region), marker, f"census:ready:{self.region}:{now_ms}"))
            await enqueue_many(session, events)
        self.rewrites += 1
        log.info("census of %s written to the bus whole: %s", self.region, counts)
        return counts
