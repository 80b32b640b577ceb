"""NATS edges of ingest: the persisting consumer of READINGS and the MQTT devices' way in."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from nats.aio.msg import Msg

from lifeline.kit.auth import Principal
from lifeline.kit.bus import Bus, BusUnavailable
from lifeline.kit.problems import ProblemError
from lifeline.v1 import telemetry_pb2

from .endpoints import parse_readings, render_results
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
        # A fetch's messages are judged at once, not one after another: each waits for JetStream to take
        # its accepted readings, and judged together they share one publish (the group commit) instead
        # of one round trip each, which held a device sending one reading per message to ~1 ms a
        # message. Readings are claimed in message order (up to each one's first await), and answers go
        # out in message order, after every message of the fetch has been judged.
        judged = await asyncio.gather(*(self.judge(m) for m in msgs), return_exceptions=True)
        for outcome in judged:
            if isinstance(outcome, BaseException):
                # The bus or the registry is not there: nothing is answered yet; the consumer retries
                # the fetch one message at a time (a message whose readings went through meanwhile is
                # answered `duplicate` then) and naks those that fail again.
                raise outcome
        for client, body in judged:  # type: ignore[misc]  # no exceptions left
            try:
                await self.bus.publish_core(f"devices.{self.region}.{client}.results", body)
            except BusUnavailable:
                log.warning("could not answer MQTT client %s", client)

    async def judge(self, msg: Msg) -> tuple[str, bytes]:
        """The device's client id and the answer to its message (results, or a problem)."""
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
            return client, render_results(outcomes, lang)
        except ProblemError as problem:
            # A message that can never be valid is answered and acknowledged, not redelivered.
            return client, msgspec.json.encode(problem.render(lang))
