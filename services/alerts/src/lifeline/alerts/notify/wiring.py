"""Notifications as parts of the alerts service: its background parts, its routes, its Watch servicer."""

from __future__ import annotations

from fastapi import FastAPI

from lifeline.kit.bus import Bus, PullConsumer
from lifeline.kit.db import Database
from lifeline.kit.runtime import Background

from ..service import AlertsService
from .consumers import EVENTS_SUBJECT, DeliveriesHandler
from .endpoints import router
from .grpc import WatchingAlertServiceServicer
from .live import LiveFeed
from .service import Notifications
from .settings import NotifySettings
from .worker import DeliveryWorker


class NotifyParts:
    def __init__(self, *, db: Database, bus: Bus, region: str, settings: NotifySettings | None = None) -> None:
        self.settings = settings or NotifySettings()
        self.notifications = Notifications(db=db, settings=self.settings, region=region)
        self.feed = LiveFeed(bus, self.settings)
        self.worker = DeliveryWorker(self.notifications)
        # Durable and shared by replicas: each event becomes its deliveries exactly once. One batch in
        # flight across all replicas (max_ack_pending = batch), so deliveries are recorded in stream order
        # and a later event of an alert never gets recorded, and sent, before an earlier one.
        self.consumer = PullConsumer(
            bus,
            stream="EVENTS",
            durable=f"alerts-webhooks-{region}",
            filter_subject=EVENTS_SUBJECT,
            handler=DeliveriesHandler(self.notifications),
            batch=256,
            max_ack_pending=256,
        )

    def background(self) -> list[Background]:
        return [self.consumer, self.worker, self.feed]

    def install(self, app: FastAPI) -> None:
        """Add the routes; before the core's, so /alerts/stream is not taken for an alert id."""
        app.include_router(router)
        app.state.notify = self.notifications
        app.state.live = self.feed

    def servicer(self, service: AlertsService) -> WatchingAlertServiceServicer:
        return WatchingAlertServiceServicer(service, self.feed)
