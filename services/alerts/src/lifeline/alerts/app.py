"""The alerts service assembled: catalogue and policy, engine, consumers, the workflow timer, REST and gRPC."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from lifeline.kit.bus import PullConsumer
from lifeline.kit.catalogue import load_quantities
from lifeline.kit.grpc import AddServicerFn
from lifeline.kit.http import create_http_app
from lifeline.kit.mirror import PeerChannel
from lifeline.kit.runtime import Periodic, Service
from lifeline.v1 import alerts_pb2_grpc

from .census import CensusSnapshot
from .consumers import (
    ASSETS_SUBJECT,
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
    snapshot: CensusSnapshot | None = None
    _assets: PeerChannel | None = None

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
        census = PullConsumer(
            self.bus,
            stream="EVENTS",
            durable=f"alerts-assets-{region}",
            filter_subject=ASSETS_SUBJECT,
            handler=AssetsHandler(self.service, trimmer),
            batch=256,
            fetch_timeout=0.25,
        )
        if s.assets_grpc:
            # A snapshot from assets beside the events: the stream keeps only the last 30 days of changes.
            self._assets = PeerChannel(s.assets_grpc, self.instance)
            self.snapshot = CensusSnapshot(self.service, assets=self._assets, resync_s=s.census_resync_s)
            self.background.append(self.snapshot)
        # The census first: a sensor's context should be known before its readings are evaluated.
        gate = CensusGate(census, snapshot=self.snapshot)
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
        if self.snapshot is not None:
            app.state.readiness["census_snapshot"] = self._snapshot_ready
        return app

    async def _snapshot_ready(self) -> bool:
        """False until a census snapshot from assets is in (alerts runs meanwhile on the copy it has)."""
        return self.snapshot is not None and self.snapshot.ready

    async def stop(self) -> None:
        await super().stop()
        if self._assets is not None:
            await self._assets.close()

    def grpc_servicers(self) -> Sequence[tuple[AddServicerFn, Any]]:
        return ((alerts_pb2_grpc.add_AlertServiceServicer_to_server, self.notify.servicer(self.service)),)
