"""A snapshot of assets' census read over gRPC, beside the change events on the bus.

The census consumer only sees the events still on the EVENTS stream (kept 30 days), so a fresh alerts
service, or one that was down longer than that, would miss every entity that has not changed since.
At start, then every ``resync_s`` seconds, this reads every facility, sensor, responsible unit, link and
risk source through ``AssetRegistry``'s list calls (the instance's service account) and hands them to
the service, which keeps only versions newer than the ones it holds, so the snapshot and the events may
interleave in any order. While assets cannot be reached alerts keeps running on the copy it has; ``ready``
stays false (``/readyz`` says so) until a snapshot has been read completely, and failures are retried
with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc.aio

from lifeline.kit.auth import ClientCredentials
from lifeline.kit.mirror import grpc_pages
from lifeline.v1 import assets_pb2, assets_pb2_grpc

from .service import AlertsService

log = logging.getLogger(__name__)

# Largest page assets serves; a chunk of items is written in one transaction.
PAGE = 1000
CHUNK = 500


class CensusSnapshot:
    def __init__(
        self,
        service: AlertsService,
        *,
        channel: grpc.aio.Channel,
        credentials: ClientCredentials,
        resync_s: float = 600.0,
        retry_s: tuple[float, float] = (0.5, 15.0),
    ) -> None:
        self.service = service
        self.stub = assets_pb2_grpc.AssetRegistryStub(channel)
        self.credentials = credentials
        self.resync_s = resync_s
        self.retry_s = retry_s
        self.snapshots = 0
        self.applied = 0
        self.last_error: str | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """True once a snapshot has been read completely."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.ready

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="alerts-census-snapshot")
        return self._task

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self.retry_s[0]
        while not self._stopping.is_set():
            try:
                await self.read()
                delay, wait = self.retry_s[0], self.resync_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = repr(exc)
                log.warning("census snapshot from assets failed: %r; retrying in %.1f s", exc, delay)
                wait, delay = delay, min(delay * 2, self.retry_s[1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

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

    async def read(self) -> int:
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
        self.snapshots += 1
        self.applied += applied
        self.last_error = None
        self._ready.set()
        log.info("census snapshot from assets read (%d newer items applied)", applied)
        return applied
