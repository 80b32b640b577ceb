"""NATS edges of ingest: the persisting consumer of READINGS and the MQTT devices' way in."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from nats.aio.msg import Msg

from lifeline.kit.auth import Principal
from lifeline.kit.bus import Bus, BusUnavailable
from lifeline.kit.problems import ProblemError
from lifeline.v1 import telemetry_pb2

from .endpoints import parse_readings, render_results
from .registry import RegistryNotReady
from .service import IngestService
from .settings import IngestSettings

log = logging.getLogger(__name__)


def mqtt_topic_subject(region: str) -> str:
    """NATS subject of the MQTT topic devices/<region>/<client>/readings (any client)."""
    return f"devices.{region}.*.readings"


class PersistHandler:
    """Stores each fetched batch of ReadingsAccepted messages in one transaction."""

    def __init__(self, service: IngestService, on_commit: Any = None) -> None:
        self.service = service
        self.on_commit = on_commit

    async def __call__(self, msgs: list[Msg]) -> None:
        # Decoded one message at a time as persist goes (see IngestService.persist).
        await self.service.persist(telemetry_pb2.ReadingsAccepted.FromString(m.data) for m in msgs)
        if self.on_commit is not None:
            self.on_commit()


class MqttHandler:
    """Readings that devices published over MQTT: same validation, results back on .../results.

    Devices authenticate to nats-server's MQTT listener (its users and permissions confine a device
    to its own topics), so a message here speaks for a device of this instance's region.
    """

    def __init__(self, service: IngestService, bus: Bus, settings: IngestSettings, region: str) -> None:
        self.service = service
        self.bus = bus
        self.settings = settings
        self.region = region

    async def __call__(self, msgs: list[Msg]) -> None:
        for m in msgs:
            await self.handle(m)

    async def handle(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        client = parts[2] if len(parts) == 4 else "unknown"
        principal = Principal(
            subject=f"mqtt:{client}", client_id=client, roles=frozenset({"device"}), region=self.region
        )
        lang = self.settings.mqtt_language
        try:
            if len(msg.data) > self.settings.max_body_bytes:
                raise ProblemError(413, detail="ingest.body_too_large", params={"max": self.settings.max_body_bytes})
            items = parse_readings(msg.data, self.settings.max_batch)
            outcomes = await self.service.ingest(items, principal, source=f"mqtt:{client}")
            body = render_results(outcomes, lang)
        except ProblemError as problem:
            # A message that can never be valid is answered and acknowledged, not redelivered.
            body = msgspec.json.encode(problem.render(lang))
        except (BusUnavailable, RegistryNotReady):
            raise  # nak: the consumer redelivers it once the bus is back or the registry is loaded
        reply = f"devices.{self.region}.{client}.results"
        try:
            await self.bus.publish_core(reply, body)
        except BusUnavailable:
            log.warning("could not answer MQTT client %s", client)
