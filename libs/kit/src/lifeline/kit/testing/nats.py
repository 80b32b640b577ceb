"""Fixtures: a real nats-server with JetStream and MQTT on free ports (see lifeline.kit.testing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lifeline.kit.bus import Bus
from lifeline.kit.natsserver import NatsServer

__all__ = ["bus", "nats_server"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server per test session (per xdist worker); tests that stop it must start it again."""
    server = NatsServer(store_dir=Path(tmp_path_factory.mktemp("nats")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connected Bus with the instance's streams declared."""
    if not nats_server.running:
        nats_server.start()
    b = Bus(nats_server.url, name="test")
    await b.start()
    await b.wait_ready(10)
    yield b
    await b.close()
