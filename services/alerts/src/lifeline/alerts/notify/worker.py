"""The delivery worker: sends due webhook deliveries, woken as soon as some are recorded or freed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from lifeline.kit.runtime import TaskPart

from .service import Notifications

log = logging.getLogger(__name__)


class DeliveryWorker(TaskPart):
    """Loops over ``Notifications.deliver_due``; sleeps up to the poll interval when nothing is due."""

    task_name = "alerts-webhooks"

    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        notifications.on_due = self._wake.set

    def _http(self) -> httpx.AsyncClient:
        # Made on the first delivery, not at start: its TLS context loads the CA bundle (~1.4 MB of RSS
        # and ~50 ms of the event loop), which an instance without webhook subscriptions never needs.
        if self._client is None:
            # Receivers are third parties: no redirects (a signed body must not land elsewhere).
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self._client

    async def _run(self) -> None:
        settings = self.notifications.settings
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    tried = await self.notifications.deliver_due(self._http)
                except Exception:
                    log.exception("webhook delivery round failed")
                    tried = 0
                if tried >= settings.concurrency:
                    continue  # more may be due
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), settings.poll_interval_s)
        finally:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    async def stop(self) -> None:
        """Finish the attempts in flight and stop."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
