"""NATS edges of alerts: readings, ingest's sensor status and assets' census changes, each a durable consumer.

Handlers decode and hand whole batches to the service; the consumer acknowledges a batch only after the
service's transaction committed (a failure nak's it and the engine was rolled back, so it is evaluated again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from lifeline.kit.bus import PullConsumer
from lifeline.kit.runtime import TaskPart, freeze_heap
from lifeline.v1 import telemetry_pb2

from .census import CensusSnapshot
from .memory import HeapTrimmer
from .service import AlertsService

log = logging.getLogger(__name__)

READINGS_SUBJECT = "readings.>"
STATUS_SUBJECT = "events.ingest.sensor_status.>"
ASSETS_SUBJECT = "events.assets.>"


class CensusGate(TaskPart):
    """Holds readings back at start until the census consumer has caught up (and the snapshot is in).

    A reading of a sensor alerts does not know yet is skipped, not retried; so on a fresh start the
    sensors' events already on the stream, and the first census snapshot from assets when there is one,
    are applied first (waiting at most ``timeout`` seconds: an unreachable assets must not stop alerts).
    """

    task_name = "alerts-census-gate"

    def __init__(self, census: PullConsumer, timeout: float = 10.0, snapshot: CensusSnapshot | None = None) -> None:
        self.census = census
        self.snapshot = snapshot
        self.timeout = timeout
        self.freeze_within = 300.0
        self.ready = asyncio.Event()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        caught_up = False
        while loop.time() < deadline:
            if caught_up := await self._caught_up():
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("census not caught up after %.0f s; evaluating readings anyway", self.timeout)
        self.ready.set()
        # Keep watching (readings flow meanwhile) so that the heap is frozen with the whole census in it.
        deadline = loop.time() + self.freeze_within
        while not caught_up and loop.time() < deadline:
            await asyncio.sleep(0.5)
            caught_up = await self._caught_up()
        freeze_heap("the census caught up")

    async def _caught_up(self) -> bool:
        with contextlib.suppress(Exception):  # the durable does not exist until its first pull
            return await self.census.pending() == 0 and (self.snapshot is None or self.snapshot.ready)
        return False

    async def stop(self) -> None:
        self.ready.set()
        await self._cancel_task()


class ReadingsHandler:
    def __init__(self, service: AlertsService, gate: CensusGate, trimmer: HeapTrimmer | None = None) -> None:
        self.service = service
        self.gate = gate
        self.trimmer = trimmer

    async def __call__(self, msgs: list[Msg]) -> None:
        await self.gate.ready.wait()
        # Decoded one message at a time: a batch of 64 × 500 readings all decoded at once would set the
        # process's memory high-water mark for nothing.
        await self.service.evaluate(telemetry_pb2.ReadingsAccepted.FromString(m.data) for m in msgs)
        if self.trimmer is not None:
            self.trimmer.note(len(msgs))


class StatusHandler:
    def __init__(self, service: AlertsService, gate: CensusGate) -> None:
        self.service = service
        self.gate = gate

    async def __call__(self, msgs: list[Msg]) -> None:
        await self.gate.ready.wait()
        await self.service.apply_status([telemetry_pb2.SensorStatusChanged.FromString(m.data) for m in msgs])


class AssetsHandler:
    def __init__(self, service: AlertsService, trimmer: HeapTrimmer | None = None) -> None:
        self.service = service
        self.trimmer = trimmer

    async def __call__(self, msgs: list[Msg]) -> None:
        # events.assets.<entity>.<region>
        await self.service.apply_assets((m.subject.split(".")[2], m.data) for m in msgs)
        if self.trimmer is not None:
            self.trimmer.note(len(msgs))
