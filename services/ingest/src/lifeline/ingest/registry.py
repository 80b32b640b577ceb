"""The sensor registry ingest validates against, and where it comes from.

Two sources (setting ``registry``): the instance's assets service, whose census is on the bus — the
latest ``SensorChanged`` of every sensor, then each new one, newest version wins (:func:`follow_assets`,
a :class:`lifeline.kit.census.CensusFollower`) — or a catalogue CSV file (tests, the bench, an instance
without assets). Either way the registry gets SensorSpec values through ``apply``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lifeline.kit.bus import Bus
from lifeline.kit.catalogue import (
    Quantity,
    QuantityCatalogue,
    SensorSpec,
    iter_sensors,
    load_quantities,
    region_contains,
)
from lifeline.kit.census import CensusFollower
from lifeline.v1 import assets_pb2

SENSOR_STATUS = {assets_pb2.ASSET_SENSOR_STATUS_ACTIVE: "active", assets_pb2.ASSET_SENSOR_STATUS_RETIRED: "retired"}


class RegistryNotReady(Exception):
    """The registry has not been loaded from its source yet; the caller should retry later."""


@dataclass(frozen=True, slots=True)
class RegisteredSensor:
    """A sensor with its quantity resolved, ready for the hot path.

    What validation reads for every reading is a plain attribute here (not a property or a hop
    through the spec and the quantity): it is read hundreds of thousands of times a second. Only what
    ingest reads is kept, not the SensorSpec it came from: a pydantic model instance costs ~1.2 KB a
    sensor (2.3 MB of the front's RSS for the bench's 2,000 sensors, ~12 MB for a city of 10,000),
    held by every ingest process.
    """

    sensor_id: str
    quantity: Quantity
    # Physical range in the quantity's canonical unit (the sensor's override, else the quantity's).
    range: tuple[float, float]
    region: str
    active: bool
    # The quantity's canonical unit, and the unit a reading without one is taken to be in.
    canonical_unit: str
    default_unit: str
    # How often the sensor reports (the offline check counts missed intervals).
    interval_s: int

    @classmethod
    def of(cls, spec: SensorSpec, quantity: Quantity, range_: tuple[float, float]) -> RegisteredSensor:
        return cls(
            spec.sensor_id,
            quantity,
            range_,
            spec.region,
            spec.status == "active",
            quantity.unit,
            spec.unit,
            spec.interval_s,
        )


class SensorRegistry:
    def __init__(self, quantities: QuantityCatalogue, *, ready: Callable[[], bool] = lambda: True) -> None:
        self.quantities = quantities
        self._sensors: dict[str, RegisteredSensor] = {}
        # The sensor of an id, or None: the dict's own get (a method in between cost a call per reading).
        self.get: Callable[[str], RegisteredSensor | None] = self._sensors.get
        # False until the source has delivered the whole registry once (assets: the census marked complete).
        self._ready = ready

    @property
    def ready(self) -> bool:
        return self._ready()

    @classmethod
    def from_files(cls, sensors_file: Path | None, quantities_file: Path | None) -> SensorRegistry:
        registry = cls(load_quantities(quantities_file))
        if sensors_file is not None:
            # One spec at a time: the registry keeps less than a spec, and all specs at once would grow
            # the process by ~1.2 KB a sensor for good. A bad file raises before the registry is used.
            registry.apply(iter_sensors(sensors_file, registry.quantities))
        return registry

    def apply(self, specs: Iterable[SensorSpec]) -> None:
        """Add or replace sensors (a retired sensor stays known, so its readings get a clear reason)."""
        for spec in specs:
            self._sensors[spec.sensor_id] = RegisteredSensor.of(
                spec, self.quantities.get(spec.quantity), self.quantities.sensor_range(spec)
            )

    def __len__(self) -> int:
        return len(self._sensors)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._sensors.values())


def spec_from_proto(sensor: assets_pb2.AssetSensor) -> SensorSpec:
    """The SensorSpec of an assets AssetSensor (as in its events and ListSensors); ValueError if invalid."""
    status = SENSOR_STATUS.get(sensor.status)
    if status is None:
        raise ValueError(f"sensor {sensor.sensor_id!r} has no status")
    return SensorSpec(
        sensor_id=sensor.sensor_id,
        quantity=sensor.quantity,
        unit=sensor.unit,
        region=sensor.region,
        facility_code=sensor.facility_code,
        interval_s=sensor.interval_s,
        lat=sensor.position.lat,
        lon=sensor.position.lon,
        status=status,
        range_min=sensor.range_min if sensor.HasField("range_min") else None,
        range_max=sensor.range_max if sensor.HasField("range_max") else None,
    )


def follow_assets(registry: SensorRegistry, *, bus: Bus, region: str) -> CensusFollower[assets_pb2.AssetSensor]:
    """A copy keeping ``registry`` equal to the sensors of ``region`` in the census on the bus."""

    def decode(data: bytes) -> assets_pb2.AssetSensor | None:
        sensor = assets_pb2.SensorChanged.FromString(data).sensor
        return sensor if region_contains(region, sensor.region) else None

    return CensusFollower(
        bus,
        name=f"ingest-sensors-{region}",
        entity="sensor",
        region=region,
        decode=decode,
        key=lambda sensor: sensor.sensor_id,
        version=lambda sensor: sensor.version,
        apply=lambda sensor: registry.apply([spec_from_proto(sensor)]),
    )
