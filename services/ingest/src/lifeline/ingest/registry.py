"""The sensor registry ingest validates against.

Loaded from a catalogue file for now; `apply` takes SensorSpec values one by one so that the assets
service's change events can feed it later without changing the validation path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lifeline.kit.catalogue import Quantity, QuantityCatalogue, SensorSpec, load_quantities, load_sensors


@dataclass(frozen=True, slots=True)
class RegisteredSensor:
    """A sensor with its quantity resolved, ready for the hot path."""

    spec: SensorSpec
    quantity: Quantity
    # Physical range in the quantity's canonical unit (the sensor's override, else the quantity's).
    range: tuple[float, float]

    @property
    def sensor_id(self) -> str:
        return self.spec.sensor_id

    @property
    def region(self) -> str:
        return self.spec.region

    @property
    def active(self) -> bool:
        return self.spec.status == "active"


class SensorRegistry:
    def __init__(self, quantities: QuantityCatalogue) -> None:
        self.quantities = quantities
        self._sensors: dict[str, RegisteredSensor] = {}

    @classmethod
    def from_files(cls, sensors_file: Path | None, quantities_file: Path | None) -> SensorRegistry:
        registry = cls(load_quantities(quantities_file))
        if sensors_file is not None:
            registry.apply(load_sensors(sensors_file, registry.quantities).values())
        return registry

    def apply(self, specs: Iterable[SensorSpec]) -> None:
        """Add or replace sensors (a retired sensor stays known, so its readings get a clear reason)."""
        for spec in specs:
            self._sensors[spec.sensor_id] = RegisteredSensor(
                spec, self.quantities.get(spec.quantity), self.quantities.sensor_range(spec)
            )

    def get(self, sensor_id: str) -> RegisteredSensor | None:
        return self._sensors.get(sensor_id)

    def __len__(self) -> int:
        return len(self._sensors)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._sensors.values())
