"""NATS edges of alerts: readings, ingest's sensor status and assets' census changes, each a durable consumer.

Handlers decode and hand whole batches to the service; the consumer acknowledges a batch only after the
service's transaction committed (a failure nak's it and the engine was rolled back, so it is evaluated again).
"""

from __future__ import annotations

from nats.aio.msg import Msg

from lifeline.v1 import telemetry_pb2

from .service import AlertsService

READINGS_SUBJECT = "readings.>"
STATUS_SUBJECT = "events.ingest.sensor_status.>"
ASSETS_SUBJECT = "events.assets.>"


class ReadingsHandler:
    def __init__(self, service: AlertsService) -> None:
        self.service = service

    async def __call__(self, msgs: list[Msg]) -> None:
        await self.service.evaluate([telemetry_pb2.ReadingsAccepted.FromString(m.data) for m in msgs])


class StatusHandler:
    def __init__(self, service: AlertsService) -> None:
        self.service = service

    async def __call__(self, msgs: list[Msg]) -> None:
        await self.service.apply_status([telemetry_pb2.SensorStatusChanged.FromString(m.data) for m in msgs])


class AssetsHandler:
    def __init__(self, service: AlertsService) -> None:
        self.service = service

    async def __call__(self, msgs: list[Msg]) -> None:
        # events.assets.<entity>.<region>
        await self.service.apply_assets((m.subject.split(".")[2], m.data) for m in msgs)
