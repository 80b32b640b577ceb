"""NATS edges of alerts: readings, ingest's sensor status and assets' census, each a durable consumer.

Handlers decode and hand whole batches to the service; the consumer acknowledges a batch only after the
service's transaction committed (a failure nak's it and the engine was rolled back, so it is evaluated again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg

from lifeline.kit.bus import Bus, PullConsumer
from lifeline.kit.census import CENSUS_PREFIX, census_complete, entity_of
from lifeline.kit.runtime import TaskPart, freeze_heap
from lifeline.v1 import telemetry_pb2

from .memory import HeapTrimmer
from .service import AlertsService

log = logging.getLogger(__name__)

READINGS_SUBJECT = "readings.>"
STATUS_SUBJECT = "events.ingest.sensor_status.>"
# The census (lifeline.kit.census): every entity kind and the completeness marker.
CENSUS_SUBJECT = f"{CENSUS_PREFIX}>"


class CensusGate(TaskPart):
    """Holds readings back at start until the census is read: marked complete by assets, and the census
    consumer caught up.

    A reading of a sensor alerts does not know yet is skipped, not retried; so on a fresh start the
    census on the bus is applied first (waiting at most ``timeout`` seconds: a census that is not there —
    assets never ran, or nats-server lost its store — must not stop alerts). ``complete`` (readiness)
    turns true once it was read whole, and stays true.
    """

    task_name = "alerts-census-gate"

    def __init__(self, census: PullConsumer, *, bus: Bus, region: str, timeout: float = 10.0) -> None:
        self.census = census
        self.bus = bus
        self.region = region
        self.timeout = timeout
        self.freeze_within = 300.0
        self.ready = asyncio.Event()
        self.complete = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            if await self._caught_up():
                break
            await asyncio.sleep(0.05)
        else:
            log.warning("census not read whole after %.0f s; evaluating readings anyway", self.timeout)
        self.ready.set()
        # Keep watching (readings flow meanwhile) so that the heap is frozen with the whole census in it.
        deadline = loop.time() + self.freeze_within
        while not self.complete:
            await asyncio.sleep(0.5)
            await self._caught_up()
            if loop.time() > deadline:
                break
        freeze_heap("the census caught up")
        while not self.complete:  # readiness: still looking, less often
            await asyncio.sleep(5.0)
            await self._caught_up()

    async def _caught_up(self) -> bool:
        with contextlib.suppress(Exception):  # the durable does not exist until its first pull
            if await census_complete(self.bus, self.region) and await self.census.caught_up():
                self.complete = True
        return self.complete

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
        # $KV.census.<entity>.<region>.<id>, and the marker ($KV.census.ready.<region>): not an entity.
        await self.service.apply_assets((entity, m.data) for m in msgs if (entity := entity_of(m.subject)) != "ready")
        if self.trimmer is not None:
            self.trimmer.note(len(msgs))
