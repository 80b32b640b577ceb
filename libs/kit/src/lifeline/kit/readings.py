"""The READINGS stream's message, ``ReadingsAccepted``: built by ingest's front door, read by every consumer.

The front door writes a message's readings as columns (one packed repeated field per attribute): on
this path every reading is touched by three processes (front, storage, alerts), and a submessage per
reading cost ~1 µs to build and ~0.6 µs to read back where columns cost ~0.25 and ~0.4. Consumers read
the per-reading form (``readings``) as well, so a message published by an earlier version, a test or
another producer is understood the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain

from lifeline.v1 import telemetry_pb2

# (sensor id, device time ms, value, unit, quality code)
ReadingRow = tuple[str, int, float, str, int]


class MalformedReadings(ValueError):
    """A ReadingsAccepted whose columns differ in length: no reading of it can be trusted."""


def message_from_rows(
    region: str, rows: Iterable[Sequence[object]], received_time_ms: int = 0
) -> telemetry_pb2.ReadingsAccepted:
    """One message of readings given as rows ``(sensor id, device time ms, value, unit, quality, …)``.

    Extra trailing fields of a row are ignored (the front door's candidates carry their region).
    """
    try:
        columns = list(zip(*rows, strict=True)) or [(), (), (), (), ()]
    except ValueError as exc:
        raise MalformedReadings("readings rows of different lengths") from exc
    if len(columns) < 5:
        raise MalformedReadings(f"readings rows of {len(columns)} fields, 5 needed")
    ids, times, values, units, qualities = columns[:5]
    return telemetry_pb2.ReadingsAccepted(
        region=region,
        sensor_ids=ids,
        device_times_ms=times,
        values=values,
        units=units,
        qualities=qualities,
        received_time_ms=received_time_ms,
    )


def iter_readings(msg: telemetry_pb2.ReadingsAccepted) -> Iterator[ReadingRow]:
    """Every reading of a message, columns first, then any in the per-reading form.

    Raises MalformedReadings before yielding anything when the columns differ in length.
    """
    ids = msg.sensor_ids
    times, values, units, qualities = msg.device_times_ms, msg.values, msg.units, msg.qualities
    if not (len(times) == len(values) == len(units) == len(qualities) == len(ids)):
        raise MalformedReadings(
            f"ReadingsAccepted with columns of different lengths: {len(ids)} sensor ids, {len(times)} times, "
            f"{len(values)} values, {len(units)} units, {len(qualities)} qualities"
        )
    columns = zip(ids, times, values, units, qualities, strict=True)
    if not msg.readings:
        return columns
    rows = ((r.sensor_id, r.device_time_ms, r.value, r.unit, r.quality) for r in msg.readings)
    return chain(columns, rows)


def sensor_ids_of(msg: telemetry_pb2.ReadingsAccepted) -> set[str]:
    """The distinct sensors a message carries readings of."""
    ids = set(msg.sensor_ids)
    ids.update(r.sensor_id for r in msg.readings)
    return ids
