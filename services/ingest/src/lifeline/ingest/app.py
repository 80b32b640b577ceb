"""The ingest service assembled: registry, validator, dedup index, edges and background parts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from lifeline.kit.bus import PullConsumer
from lifeline.kit.catalogue import load_quantities
from lifeline.kit.http import add_fast_route, create_http_app
from lifeline.kit.runtime import Periodic, Service, freeze_heap

from .consumers import MqttHandler, PersistHandler, mqtt_topic_subject
from .dedup import DedupIndex
from .endpoints import accept_readings, router
from .registry import SensorRegistry, follow_assets
from .service import IngestQueries, IngestService, readings_subject
from .settings import IngestSettings
from .validation import Limits, Validator

if TYPE_CHECKING:
    from lifeline.kit.grpc import AddServicerFn

MIGRATIONS = Path(__file__).parent / "migrations"
# The persisting consumer's own database connection (Database.dedicate_connection).
PERSIST_CONNECTION = "ingest-persist"


class IngestApp(Service):
    name = "ingest"
    settings_cls = IngestSettings
    migrations = MIGRATIONS
    grpc_service_names = ("lifeline.v1.TelemetryIngest", "lifeline.v1.TelemetryQuery")

    settings: IngestSettings

    async def setup(self) -> None:
        s = self.settings
        region = self.instance.region
        if s.has_role("storage"):
            # The persisting consumer writes on a connection of its own: on SQLite one page cache sized
            # for the readings index's hot pages (about one per sensor: with SQLite's default 2 MiB they
            # no longer fit once the table holds a few hundred thousand rows, and each insert rereads
            # pages, ~40 % more CPU per row at 400,000 rows); everything else keeps the pool and the
            # default cache. In the pool, a second connection with that cache came into rotation
            # whenever the offline check or a readiness ping ran beside a batch (~16 MB of RSS more).
            self.db.dedicate_connection(PERSIST_CONNECTION, sqlite_cache_mib=s.sqlite_cache_mib)
        if s.registry == "file":
            self.registry = SensorRegistry.from_files(s.sensors_file, s.quantities_file)
        else:
            self._follow_assets(region)
        limits = Limits(
            max_future_skew_ms=int(s.max_future_skew_s * 1000), retention_ms=int(s.retention_days * 86_400_000)
        )
        self.service = IngestService(
            region=region,
            registry=self.registry,
            validator=Validator(self.registry, limits),
            dedup=DedupIndex(s.dedup_per_sensor),
            bus=self.bus,
            db=self.db,
            publish_timeout_s=s.publish_timeout_s,
            max_message_readings=s.max_batch,
            publish_max_in_flight=s.publish_max_in_flight,
            persist_connection=PERSIST_CONNECTION if s.has_role("storage") else None,
        )
        await self.service.seed()
        self.queries = IngestQueries(registry=self.registry, db=self.db)
        if s.has_role("storage"):
            self._setup_storage(region)
        if s.has_role("front"):
            self.background.append(
                PullConsumer(
                    self.bus,
                    stream="DEVICES",
                    durable=f"ingest-mqtt-{region}",
                    filter_subject=mqtt_topic_subject(region),
                    handler=MqttHandler(self.service, self.bus, s, region),
                    batch=50,
                )
            )

    def _follow_assets(self, region: str) -> None:
        # Every ingest process (front and storage alike) keeps its own registry, hence its own copy.
        s = self.settings
        self.registry = SensorRegistry(load_quantities(s.quantities_file), ready=lambda: self.census.ready)
        self.census = follow_assets(self.registry, bus=self.bus, region=region)
        self.background.append(self.census)

    def _setup_storage(self, region: str) -> None:
        s = self.settings
        persist_consumer = PullConsumer(
            self.bus,
            stream="READINGS",
            durable=f"ingest-persist-{region}",
            filter_subject=readings_subject(region),
            handler=PersistHandler(self.service),
            batch=s.consumer_batch,
            linger=s.consumer_linger_s,
        )
        status_timer = Periodic(
            "ingest-offline-check",
            s.status_check_interval_s,
            lambda: self.service.check_offline(offline_factor=s.offline_factor),
        )
        self.background += [persist_consumer, status_timer]

    def create_app(self) -> FastAPI:
        app = create_http_app(title="Lifeline ingest", version="0.1.0")
        if self.settings.has_role("front"):
            app.include_router(router)
            add_fast_route(app, "POST", "/v1/readings", accept_readings)
        app.state.ingest = self.service
        app.state.queries = self.queries
        app.state.settings = self.settings
        app.state.readiness["registry"] = self._registry_ready
        return app

    async def start(self) -> None:
        await super().start()
        freeze_heap("start-up")

    async def _registry_ready(self) -> bool:
        return self.registry.ready

    def grpc_servicers(self) -> Sequence[tuple[AddServicerFn, Any]]:
        if not self.settings.has_role("front"):
            return ()
        # Imported by the front only: the storage process serves no gRPC (grpc: ~9.5 MB of RSS).
        from lifeline.v1 import telemetry_pb2_grpc

        from .grpc import TelemetryIngestServicer, TelemetryQueryServicer

        return (
            (
                telemetry_pb2_grpc.add_TelemetryIngestServicer_to_server,
                TelemetryIngestServicer(self.service, self.settings),
            ),
            (telemetry_pb2_grpc.add_TelemetryQueryServicer_to_server, TelemetryQueryServicer(self.queries)),
        )
