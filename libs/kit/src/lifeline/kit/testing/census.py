"""Census entries written straight to the bus, as the assets service's outbox relay would (tests, bench).

In an instance only assets writes the census (lifeline.kit.census); a test or a benchmark without an
assets service plays its part with these.
"""

from __future__ import annotations

import secrets

from lifeline.kit.bus import Bus
from lifeline.kit.census import census_subject, ready_subject
from lifeline.v1 import assets_pb2

__all__ = ["mark_census_complete", "publish_census_entry"]


async def publish_census_entry(bus: Bus, entity: str, region: str, key: str, payload: bytes) -> None:
    """One entity version's census entry (its change event's payload)."""
    await bus.publish(
        census_subject(entity, region, key), payload, msg_id=f"census:{entity}:{key}:{secrets.token_hex(6)}"
    )


async def mark_census_complete(bus: Bus, region: str = "340100", **entities: int) -> None:
    """The marker assets writes once the census of ``region`` is whole on the bus."""
    marker = assets_pb2.CensusComplete(region=region, entities=entities)
    await bus.publish(ready_subject(region), marker.SerializeToString(), msg_id=f"census:ready:{secrets.token_hex(6)}")
