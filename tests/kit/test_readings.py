"""The READINGS message: columns written, both forms read, malformed columns refused."""

from __future__ import annotations

import pytest

from lifeline.kit.readings import MalformedReadings, iter_readings, message_from_rows, sensor_ids_of
from lifeline.v1 import common_pb2, telemetry_pb2

GOOD, SUSPECT = common_pb2.QUALITY_GOOD, common_pb2.QUALITY_SUSPECT


def test_rows_round_trip_through_the_wire_as_columns() -> None:
    rows = [("s1", 1_000, 1.5, "%LEL", GOOD, "340104"), ("s2", 2_000, -3.25, "", SUSPECT, "340104")]
    msg = message_from_rows("340100", rows, received_time_ms=99)
    wire = telemetry_pb2.ReadingsAccepted.FromString(msg.SerializeToString())
    assert not wire.readings  # written as columns, not a submessage per reading
    assert list(wire.sensor_ids) == ["s1", "s2"]
    assert (wire.region, wire.received_time_ms) == ("340100", 99)
    assert list(iter_readings(wire)) == [r[:5] for r in rows]
    assert sensor_ids_of(wire) == {"s1", "s2"}


def test_the_per_reading_form_and_a_mixed_message_are_read_in_order() -> None:
    legacy = telemetry_pb2.ReadingsAccepted(
        region="340100",
        readings=[telemetry_pb2.Reading(sensor_id="old", device_time_ms=5, value=2.0, unit="kPa", quality=GOOD)],
    )
    assert list(iter_readings(legacy)) == [("old", 5, 2.0, "kPa", GOOD)]
    mixed = message_from_rows("340100", [("new", 6, 3.0, "MPa", SUSPECT)])
    mixed.MergeFrom(legacy)
    assert list(iter_readings(mixed)) == [("new", 6, 3.0, "MPa", SUSPECT), ("old", 5, 2.0, "kPa", GOOD)]
    assert sensor_ids_of(mixed) == {"new", "old"}


def test_an_empty_message_has_no_readings() -> None:
    assert list(iter_readings(message_from_rows("340100", []))) == []
    assert list(iter_readings(telemetry_pb2.ReadingsAccepted())) == []


def test_columns_of_different_lengths_are_refused_before_any_reading() -> None:
    msg = message_from_rows("340100", [("s1", 1, 1.0, "", GOOD), ("s2", 2, 2.0, "", GOOD)])
    del msg.values[1]
    with pytest.raises(MalformedReadings, match="2 sensor ids, 2 times, 1 values"):
        iter_readings(msg)
    with pytest.raises(MalformedReadings):
        message_from_rows("340100", [("s1", 1, 1.0, "", GOOD), ("s2", 2, 2.0, "")])  # a short row
