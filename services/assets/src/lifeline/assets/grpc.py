"""gRPC edge of assets: AssetRegistry reads, scoped by the caller's region like REST."""

from __future__ import annotations

from typing import Any

from lifeline.kit.auth import current_principal
from lifeline.v1 import assets_pb2, assets_pb2_grpc

from .messages import FACILITY_STATUS_NAME, KIND_NAME, SENSOR_STATUS_NAME, facility_proto, sensor_proto
from .service import AssetsService


class AssetRegistryServicer(assets_pb2_grpc.AssetRegistryServicer):
    def __init__(self, service: AssetsService) -> None:
        self.service = service

    async def GetFacility(self, request: Any, context: Any) -> assets_pb2.GetFacilityResponse:
        doc = await self.service.get(
            entity="facility",
            key=request.code,
            principal=current_principal(),
            as_of_ms=request.as_of_ms or None,
            source=context.peer(),
        )
        return assets_pb2.GetFacilityResponse(facility=facility_proto(doc))

    async def ListFacilities(self, request: Any, context: Any) -> assets_pb2.ListFacilitiesResponse:
        docs, token = await self.service.page(
            entity="facility",
            principal=current_principal(),
            equals={"kind": KIND_NAME.get(request.kind), "status": FACILITY_STATUS_NAME.get(request.status)},
            region_prefix=request.region_prefix or None,
            text=request.query or None,
            limit=request.limit or 100,
            page_token=request.page_token or None,
            source=context.peer(),
        )
        return assets_pb2.ListFacilitiesResponse(
            facilities=[facility_proto(d) for d in docs], next_page_token=token or ""
        )

    async def GetSensor(self, request: Any, context: Any) -> assets_pb2.GetSensorResponse:
        doc = await self.service.get(
            entity="sensor", key=request.sensor_id, principal=current_principal(), source=context.peer()
        )
        return assets_pb2.GetSensorResponse(sensor=sensor_proto(doc))

    async def ListSensors(self, request: Any, context: Any) -> assets_pb2.ListSensorsResponse:
        docs, token = await self.service.page(
            entity="sensor",
            principal=current_principal(),
            equals={"facility_code": request.facility_code or None, "status": SENSOR_STATUS_NAME.get(request.status)},
            region_prefix=request.region_prefix or None,
            text=request.query or None,
            limit=request.limit or 100,
            page_token=request.page_token or None,
            source=context.peer(),
        )
        return assets_pb2.ListSensorsResponse(sensors=[sensor_proto(d) for d in docs], next_page_token=token or "")
