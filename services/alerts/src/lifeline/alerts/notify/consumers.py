"""NATS edge of notifications: alert events become webhook deliveries (durable, shared by replicas)."""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from lifeline.v1 import alerts_pb2

from .service import Notifications, event_id_of

log = logging.getLogger(__name__)

EVENTS_SUBJECT = "events.alerts.>"


def decode(msg: Msg) -> tuple[str, alerts_pb2.AlertEvent] | None:
    """(event id, event) of an alert event message, or None (logged) if it is not one."""
    try:
        event = alerts_pb2.AlertEvent.FromString(msg.data)
    except DecodeError as exc:
        log.error("undecodable alert event on %s: %r", msg.subject, exc)
        return None
    return event_id_of(msg.headers, event), event


class DeliveriesHandler:
    """Records the deliveries of a batch of alert events in one transaction; acked after it commits."""

    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications

    async def __call__(self, msgs: list[Msg]) -> None:
        events = [e for e in map(decode, msgs) if e is not None]
        if events:
            await self.notifications.record(events)
