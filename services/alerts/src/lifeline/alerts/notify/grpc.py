"""gRPC edge of notifications: ``AlertService.Watch``, added to the core servicer by subclassing it.

The core servicer left Watch unimplemented for this slice; the service registers this subclass, so
AlertService stays one servicer with one set of scope and role checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lifeline.kit.api import require_any_role
from lifeline.kit.auth import current_principal
from lifeline.v1 import alerts_pb2 as P

from ..grpc import AlertServiceServicer
from ..service import READER_ROLES, AlertsService
from .live import RESET, LiveFeed, WatchFilter


class WatchingAlertServiceServicer(AlertServiceServicer):
    def __init__(self, service: AlertsService, feed: LiveFeed) -> None:
        super().__init__(service)
        self.feed = feed

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[P.WatchResponse]:
        principal = current_principal()
        require_any_role(principal, READER_ROLES)
        flt = WatchFilter(
            min_level=request.min_level,
            domain=request.domain,
            region_prefix=request.region_prefix,
            kinds=frozenset(request.kinds),
        )
        watcher = self.feed.watch(principal, flt)
        try:
            # Headers now: the caller knows it is watching before the first event comes.
            await context.send_initial_metadata(())
            async for item in watcher.stream():
                if item is not None and item is not RESET:
                    yield P.WatchResponse(event=item[1])  # type: ignore[index]
        finally:
            self.feed.unwatch(watcher)
