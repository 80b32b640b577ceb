"""The assets service assembled: catalogue, service, REST and gRPC edges."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from lifeline.kit.catalogue import load_quantities
from lifeline.kit.grpc import AddServicerFn
from lifeline.kit.http import create_http_app
from lifeline.kit.runtime import Service
from lifeline.v1 import assets_pb2_grpc

from .bulk.endpoints import router as bulk_router
from .census import CensusKeeper
from .coverage.endpoints import router as coverage_router
from .coverage.service import coverage_service
from .endpoints import router
from .grpc import AssetRegistryServicer
from .service import AssetsService
from .settings import AssetsSettings
from .spatial.endpoints import router as spatial_router

MIGRATIONS = Path(__file__).parent / "migrations"


class AssetsApp(Service):
    name = "assets"
    settings_cls = AssetsSettings
    migrations = MIGRATIONS
    grpc_service_names = ("lifeline.v1.AssetRegistry",)

    settings: AssetsSettings

    async def setup(self) -> None:
        self.service = AssetsService(
            region=self.instance.region, catalogue=load_quantities(self.settings.quantities_file), db=self.db
        )
        self.coverage = coverage_service(self)
        # The census on the bus, whole: what ingest and alerts read their copies from.
        self.census = CensusKeeper(
            bus=self.bus, db=self.db, region=self.instance.region, interval_s=self.settings.census_check_s
        )
        self.background.append(self.census)

    def create_app(self) -> FastAPI:
        app = create_http_app(title="Lifeline assets", version="0.1.0")
        app.include_router(router)
        app.include_router(spatial_router)
        app.include_router(bulk_router)
        app.include_router(coverage_router)
        app.state.assets = self.service
        app.state.coverage = self.coverage
        return app

    def grpc_servicers(self) -> Sequence[tuple[AddServicerFn, Any]]:
        return ((assets_pb2_grpc.add_AssetRegistryServicer_to_server, AssetRegistryServicer(self.service)),)
