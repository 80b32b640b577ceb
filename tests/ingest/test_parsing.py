"""Picking readings out of a JSON body: the typed way for the common shape, the generic way for the rest."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from lifeline.ingest.endpoints import parse_batch, parse_readings
from lifeline.ingest.validation import from_json, pick_plain_json
from lifeline.kit.problems import ProblemError

T = 1_700_000_000_000

PLAIN = [
    {"sensor_id": "GAS-CH4-1", "device_time_ms": T, "value": 1.5, "unit": "%LEL", "quality": "good"},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": T + 1, "value": 2},  # int value, no unit, no quality
    {"sensor_id": "GAS-CH4-2", "device_time_ms": T, "value": 1e308, "unit": "%vol", "quality": "suspect"},
    {"sensor_id": "GAS-CH4-2", "device_time_ms": -5, "value": -0.0, "quality": "dubious", "extra": [1, {"x": None}]},
    {"sensor_id": "NOPE", "device_time_ms": T, "value": 1.0, "time": "2020-01-01T00:00:00+08:00"},
]
# Each of these makes its whole body take the generic way (and is judged there, reading by reading).
OTHER_SHAPES: list[Any] = [
    {"sensor_id": "GAS-CH4-1", "time": "2026-01-01T00:00:00+08:00", "value": 1.0},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": float(T), "value": 1.0},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": T, "value": "Infinity"},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": T, "value": True},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": True, "value": 1.0},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": T, "value": 1.0, "unit": None},
    {"sensor_id": "GAS-CH4-1", "device_time_ms": T, "value": 1.0, "quality": 2},
    {"sensor_id": "", "device_time_ms": T, "value": 1.0},
    {"device_time_ms": T, "value": 1.0},
    "not an object",
]


def generic(body: bytes) -> list[Any]:
    return [from_json(x) for x in parse_batch(body, 5000)]


def test_the_common_shape_is_picked_typed_and_as_the_generic_way_picks_it() -> None:
    body = msgspec.json.encode({"readings": PLAIN, "note": "ignored"})
    assert pick_plain_json(body) is not None
    assert parse_readings(body, 5000) == generic(body)


@pytest.mark.parametrize("odd", OTHER_SHAPES)
def test_any_other_reading_sends_its_body_the_generic_way(odd: Any) -> None:
    body = msgspec.json.encode({"readings": [*PLAIN, odd]})
    assert pick_plain_json(body) is None
    assert parse_readings(body, 5000) == generic(body)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"readings": []}', 400),
        (b'{"readings": {}}', 400),
        (b"[]", 400),
        (msgspec.json.encode({"readings": PLAIN * 2}), 413),
    ],
)
def test_whole_body_problems_are_the_generic_ones(body: bytes, status: int) -> None:
    with pytest.raises(ProblemError) as err:
        parse_readings(body, max_batch=len(PLAIN) + 1)
    assert err.value.status == status
