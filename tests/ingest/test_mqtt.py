"""Ingest over MQTT: devices publish to nats-server's MQTT listener, results come back on a topic."""

from __future__ import annotations

import asyncio
import json
import queue

import paho.mqtt.client as mqtt
import pytest
from nats.aio.msg import Msg

from lifeline.ingest.app import IngestApp
from lifeline.ingest.consumers import MqttHandler
from lifeline.kit.natsserver import NatsServer

from .helpers import count_rows, now_ms, reading, stored_rows, wait_stored


@pytest.fixture
def device(nats_server: NatsServer):
    results: queue.Queue[dict] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev1", clean_session=True)
    subscribed = queue.Queue()
    client.on_message = lambda c, u, msg: results.put(json.loads(msg.payload))
    client.on_subscribe = lambda *a: subscribed.put(True)
    client.connect("127.0.0.1", nats_server.mqtt_port)
    client.loop_start()
    client.subscribe("devices/340100/dev1/results", qos=1)
    subscribed.get(timeout=10)

    def publish(payload: bytes) -> None:
        info = client.publish("devices/340100/dev1/readings", payload, qos=1)
        info.wait_for_publish(timeout=10)

    yield publish, results
    client.loop_stop()
    client.disconnect()


async def next_result(results: queue.Queue, timeout: float = 15.0) -> dict:
    return await asyncio.to_thread(results.get, True, timeout)


async def test_mqtt_readings_get_the_same_results(ingest: IngestApp, device):
    publish, results = device
    t = now_ms() - 3000
    publish(
        json.dumps({"readings": [reading(ts=t, value=5.0), reading(sensor="NOPE"), reading(ts=t, value=6.0)]}).encode()
    )
    body = await next_result(results)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected"]
    assert [r.get("reason") for r in body["results"]] == [None, "unknown_sensor", "conflict"]
    assert body["results"][1]["detail"] == "未登记的传感器 NOPE"
    # The same message again (a device retrying): duplicate, nothing new stored.
    publish(json.dumps({"readings": [reading(ts=t, value=5.0)]}).encode())
    assert (await next_result(results))["results"][0]["status"] == "duplicate"
    await wait_stored(ingest, 1)
    assert await stored_rows(ingest) == [("GAS-CH4-1", t, 5.0)]


async def test_mqtt_malformed_message_gets_a_problem_and_changes_nothing(ingest: IngestApp, device):
    publish, results = device
    publish(b"this is not json")
    body = await next_result(results)
    assert body["status"] == 400 and "JSON" in body["detail"]
    publish(json.dumps({"readings": [reading(ts=i + 1) for i in range(5001)]}).encode())
    body = await next_result(results)
    assert body["status"] == 413
    await asyncio.sleep(0.5)
    assert await count_rows(ingest) == 0


async def test_a_fetch_of_one_reading_messages_is_judged_together_and_answered_in_order(ingest: IngestApp):
    # Devices sending one reading per message: a fetch's messages share JetStream publishes (one round
    # trip each held a device to ~1 ms a message); every message still gets its own answer, in order.
    handler = MqttHandler(ingest.service, ingest.bus, ingest.settings, "340100")
    answers: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    async def on_answer(msg: Msg) -> None:
        answers.put_nowait((msg.subject.split(".")[2], json.loads(msg.data)))

    sub = await ingest.bus.nc.subscribe("devices.340100.*.results", cb=on_answer)
    t = now_ms() - 60_000
    msgs, expected = [], {"dev-a": [], "dev-b": []}
    for i in range(40):
        client = "dev-a" if i % 2 else "dev-b"
        sensor = "NOPE" if i % 5 == 0 else ("GAS-CH4-1" if i % 2 else "GAS-CH4-2")
        body = json.dumps({"readings": [reading(sensor=sensor, ts=t + i, value=float(i))]}).encode()
        msgs.append(Msg(_client=ingest.bus.nc, subject=f"devices.340100.{client}.readings", data=body))
        expected[client].append("rejected" if sensor == "NOPE" else "accepted")
    before = (await ingest.bus.js.stream_info("READINGS")).state.last_seq
    await handler(msgs)
    published = (await ingest.bus.js.stream_info("READINGS")).state.last_seq - before
    got: dict[str, list[str]] = {"dev-a": [], "dev-b": []}
    for _ in range(40):
        client, answer = await asyncio.wait_for(answers.get(), 10)
        got[client].append(answer["results"][0]["status"])
    await sub.unsubscribe()
    assert got == expected
    assert 1 <= published < 8, f"32 accepted readings went out in {published} messages"
    await wait_stored(ingest, 32)
    assert sorted(v for _, _, v in await stored_rows(ingest)) == [float(i) for i in range(40) if i % 5]
