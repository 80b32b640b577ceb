"""The alerts service assembled: catalogue and policy, engine, consumers, the workflow timer, REST and gRPC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from nats.js.api import DeliverPolicy

from lifeline.kit.bus import PullConsumer
from lifeline.kit.catalogue import load_quantities
from lifeline.kit.census import CENSUS_STREAM
from lifeline.kit.config import Tier
from lifeline.kit.grpc import AddServicerFn
from lifeline.kit.http import create_http_app
from lifeline.kit.runtime import Periodic, Service
from lifeline.v1 import alerts_pb2_grpc

from .consumers import (
    CENSUS_SUBJECT,
    READINGS_SUBJECT,
    STATUS_SUBJECT,
    AssetsHandler,
    CensusGate,
    ReadingsHandler,
    StatusHandler,
)
from .endpoints import router
from .memory import HeapTrimmer
from .notify.wiring import NotifyParts
from .policy import load_policy
from .service import AlertsService
from .settings import AlertsSettings

MIGRATIONS = Path(__file__).parent / "migrations"


class AlertsApp(Service):
    name = "alerts"
    settings_cls = AlertsSettings
    migrations = MIGRATIONS
    grpc_service_names = ("lifeline.v1.AlertService",)

    settings: AlertsSettings
    gate: CensusGate

    async def setup(self) -> None:
        s = self.settings
        region = self.instance.region
        self.service = AlertsService(
            region=region,
            catalogue=load_quantities(s.quantities_file),
            policy=load_policy(s.policy_file),
            db=self.db,
        )
        await self.service.load()
        await self.service.warm_up()
        trimmer = HeapTrimmer()
        # The census on the bus: a new durable reads the latest version of every entity, then each change.
        census = PullConsumer(
            self.bus,
            stream=CENSUS_STREAM,
            durable=f"alerts-census-{region}",
            filter_subject=CENSUS_SUBJECT,
            handler=AssetsHandler(self.service, trimmer),
            batch=256,
            fetch_timeout=0.25,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        # The census first: a sensor's context should be known before its readings are evaluated.
        self.gate = gate = CensusGate(census, bus=self.bus, region=region)
        self.background += [
            trimmer,
            census,
            gate,
            PullConsumer(
                self.bus,
                stream="READINGS",
                durable=f"alerts-readings-{region}",
                filter_subject=READINGS_SUBJECT,
                handler=ReadingsHandler(self.service, gate, trimmer),
                batch=s.consumer_batch,
                linger=s.consumer_linger_s,
                fetch_timeout=0.25,
            ),
            PullConsumer(
                self.bus,
                stream="EVENTS",
                durable=f"alerts-status-{region}",
                filter_subject=STATUS_SUBJECT,
                handler=StatusHandler(self.service, gate),
                batch=256,
                fetch_timeout=0.25,
            ),
            Periodic("alerts-timers", s.timer_interval_s, self.service.check_overdue),
            Periodic("alerts-silences", s.timer_interval_s, self.service.check_silences),
        ]
        # Notifications: webhook deliveries, their worker, and the live feed of Watch and SSE.
        self.notify = NotifyParts(db=self.db, bus=self.bus, region=region)
        self.background += self.notify.background()

    def create_app(self) -> FastAPI:
        app = create_http_app(title="Lifeline alerts", version="0.1.0")
        self.notify.install(app)
        app.include_router(router)
        app.state.alerts = self.service
        if self.instance.tier is Tier.CITY:
            # The census is kept at the city tier (assets); the tiers above evaluate no readings.
            app.state.readiness["census"] = self._census_ready
        return app

    async def _census_ready(self) -> bool:
        """False until the complete census was read (alerts evaluates meanwhile with the copy it has)."""
        return self.gate.complete

    def grpc_servicers(self) -> Sequence[tuple[AddServicerFn, Any]]:
        return ((alerts_pb2_grpc.add_AlertServiceServicer_to_server, self.notify.servicer(self.service)),)
