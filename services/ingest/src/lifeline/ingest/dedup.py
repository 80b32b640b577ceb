"""Which readings ingest has already accepted, to answer `duplicate` / `conflict` at once.

Storage is the guarantee (readings are upserted by their natural key (sensor, device time), so a
reading is stored once however often it arrives); this index only lets the front door *say* so without
a database round trip for the common case. Per sensor it keeps the most recent accepted readings in
memory above a floor: a reading at or above the floor that is not in memory is new; one below the floor
(late data, or a retry of something old) is looked up in the database.

Check-and-reserve runs without awaiting, so two concurrent requests carrying the same reading cannot
both accept it; a reservation is released if the bus refuses the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UNKNOWN = object()  # below the floor: ask the database
NEW = object()


@dataclass(slots=True)
class _SensorWindow:
    floor: int  # readings with device time >= floor are all in `values` (or new)
    values: dict[int, float] = field(default_factory=dict)


class DedupIndex:
    def __init__(self, per_sensor: int = 128) -> None:
        self.per_sensor = per_sensor
        self._windows: dict[str, _SensorWindow] = {}

    def seed(self, sensor_id: str, latest_device_time_ms: int | None) -> None:
        """Start a sensor's window above what storage already holds (None: nothing stored yet)."""
        floor = (latest_device_time_ms + 1) if latest_device_time_ms is not None else -(2**62)
        self._windows.setdefault(sensor_id, _SensorWindow(floor))

    def known(self, sensor_id: str) -> bool:
        return sensor_id in self._windows

    def lookup(self, sensor_id: str, ts: int) -> object | float:
        """The accepted value for (sensor, ts), NEW, or UNKNOWN when only storage can tell."""
        w = self._windows.get(sensor_id)
        if w is None:
            return UNKNOWN
        v = w.values.get(ts)
        if v is not None:
            return v
        return UNKNOWN if ts < w.floor else NEW

    def claim(self, sensor_id: str, ts: int, value: float) -> object | float:
        """`lookup`, and if NEW `reserve` it at once: the hot path's one call per reading."""
        w = self._windows.get(sensor_id)
        if w is None:
            return UNKNOWN
        values = w.values
        prior = values.get(ts)
        if prior is not None:
            return prior
        if ts < w.floor:
            return UNKNOWN
        values[ts] = value
        if len(values) > self.per_sensor:
            self._prune(w)
        return NEW

    def reserve(self, sensor_id: str, ts: int, value: float) -> None:
        """Record an accepted reading (before publishing; `release` undoes it)."""
        w = self._windows.get(sensor_id)
        if w is None:
            # Seen only through a storage lookup: storage knows everything below this reading.
            w = self._windows[sensor_id] = _SensorWindow(ts)
        w.values[ts] = value
        if len(w.values) > self.per_sensor:
            self._prune(w)

    def release(self, sensor_id: str, ts: int) -> None:
        """Forget a reservation whose publish failed."""
        w = self._windows.get(sensor_id)
        if w is not None:
            w.values.pop(ts, None)

    def _prune(self, w: _SensorWindow) -> None:
        # Keep the newest half; everything older is (or will shortly be) in storage.
        keep = sorted(w.values)[-(self.per_sensor // 2) :]
        # The floor only rises: below it, memory is a cache and storage is the authority.
        w.floor = max(w.floor, keep[0])
        w.values = {ts: w.values[ts] for ts in keep}

    def __len__(self) -> int:
        return sum(len(w.values) for w in self._windows.values())
