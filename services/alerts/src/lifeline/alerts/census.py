"""A snapshot of assets' census read over gRPC, beside the change events on the bus.

The census consumer only sees the events still on the EVENTS stream (kept 30 days), so a fresh alerts
service, or one that was down longer than that, would miss every entity that has not changed since.
At start, then every ``resync_s`` seconds, this reads every facility, sensor, responsible unit, link and
risk source through ``AssetRegistry``'s list calls (the instance's service account) and hands them to
the service, which keeps only versions newer than the ones it holds, so the snapshot and the events may
interleave in any order. While assets cannot be reached alerts keeps running on the copy it has; ``ready``
stays false (``/readyz`` says so) until a snapshot has been read completely, and failures are retried
with backoff (:class:`lifeline.kit.mirror.SnapshotLoop`).
"""

from __future__ import annotations

from typing import Any

from lifeline.kit.mirror import PeerChannel, SnapshotLoop, grpc_pages
from lifeline.v1 import assets_pb2, assets_pb2_grpc

from .service import AlertsService

# Largest page assets serves; a chunk of items is written in one transaction.
PAGE = 1000
CHUNK = 500


class CensusSnapshot(SnapshotLoop):
    def __init__(
        self,
        service: AlertsService,
        *,
        assets: PeerChannel,
        resync_s: float = 600.0,
        retry_s: tuple[float, float] = (0.5, 15.0),
    ) -> None:
        super().__init__("alerts census snapshot from assets", retry_s=retry_s, resync_s=resync_s)
        self.service = service
        self.stub = assets_pb2_grpc.AssetRegistryStub(assets.channel)
        self.credentials = assets.credentials
        self.applied = 0

    def _lists(self) -> list[tuple[str, Any, Any, str]]:
        # Units and facilities before the sensors that name them; retired entities too, so a retirement
        # whose event is gone from the stream still reaches the copy.
        s = self.stub
        return [
            ("unit", s.ListUnits, assets_pb2.ListUnitsRequest(include_retired=True, limit=PAGE), "units"),
            ("facility", s.ListFacilities, assets_pb2.ListFacilitiesRequest(limit=PAGE), "facilities"),
            ("sensor", s.ListSensors, assets_pb2.ListSensorsRequest(limit=PAGE), "sensors"),
            ("link", s.ListLinks, assets_pb2.ListLinksRequest(include_retired=True, limit=PAGE), "links"),
            ("risk", s.ListRiskSources, assets_pb2.ListRiskSourcesRequest(include_retired=True, limit=PAGE), "risks"),
        ]

    async def read_snapshot(self) -> int:
        """Read the whole census once; returns how many items were newer than the copy."""
        applied = 0
        for entity, call, request, items in self._lists():
            chunk: list[Any] = []
            async for item in grpc_pages(call, request, items=items, credentials=self.credentials):
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    applied += await self.service.apply_snapshot(entity, chunk)
                    chunk = []
            applied += await self.service.apply_snapshot(entity, chunk)
        self.applied += applied
        return applied
