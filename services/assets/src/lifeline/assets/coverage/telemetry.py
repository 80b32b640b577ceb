"""When each sensor was last heard of, from the instance's ingest service (``TelemetryQuery.ListSensorStatus``).

Asked on demand, over gRPC with a service token, rather than kept from ingest's
``events.ingest.sensor_status.<region>`` events: ingest already holds ``last_seen_ms`` per sensor and a
coverage figure is read rarely (a report, a dashboard refresh), while those events only mark online ↔
offline transitions — a sensor reporting steadily for weeks sends none — so following them would need a
table, a durable consumer and a migration to rebuild, less exactly, what one paged call returns.
"""

from __future__ import annotations

import grpc.aio

from lifeline.kit.auth import TokenRequestError
from lifeline.kit.peer import PeerChannel, grpc_pages
from lifeline.v1 import telemetry_pb2, telemetry_pb2_grpc


class TelemetryUnavailable(Exception):
    """Ingest could not tell (unreachable, refused, or no token); ``reason`` is a message key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class IngestStatus:
    """Reads ``last_seen_ms`` of every sensor ingest knows in the caller's (the service token's) region."""

    def __init__(self, ingest: PeerChannel, *, timeout_s: float = 5.0) -> None:
        self.ingest = ingest
        self.stub = telemetry_pb2_grpc.TelemetryQueryStub(ingest.channel)
        self.timeout_s = timeout_s

    async def last_seen(self) -> dict[str, int]:
        """sensor id → last_seen_ms (0: never seen); raises :class:`TelemetryUnavailable`."""
        out: dict[str, int] = {}
        try:
            async for status in grpc_pages(
                self.stub.ListSensorStatus,
                telemetry_pb2.ListSensorStatusRequest(limit=1000),
                items="sensors",
                credentials=self.ingest.credentials,
                timeout=self.timeout_s,
            ):
                out[status.sensor_id] = status.last_seen_ms
        except grpc.aio.AioRpcError as exc:
            raise TelemetryUnavailable("coverage.ingest_failed", f"{exc.code().name} {exc.details()}") from exc
        except TokenRequestError as exc:
            raise TelemetryUnavailable("coverage.no_token", str(exc)) from exc
        return out

    def start(self) -> None:
        """Nothing to start (a service part, for ``stop``)."""

    async def stop(self) -> None:
        await self.ingest.close()
