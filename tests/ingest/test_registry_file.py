"""The registry read from a catalogue file: what validation and the offline check read of each sensor."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.ingest.registry import RegisteredSensor, SensorRegistry
from lifeline.kit.catalogue import RegistryError, load_quantities, load_sensors

from .conftest import SENSORS_CSV


def test_file_registry_keeps_what_ingest_reads_of_each_spec(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text(SENSORS_CSV + "WIDE-1,gas.ch4,%LEL,340104,3401041102000010,30,31.85,117.16,active\n")
    registry = SensorRegistry.from_files(path, None)
    cat = load_quantities()
    specs = load_sensors(path, cat)
    assert len(registry) == len(specs) == 6
    for spec in specs.values():
        quantity = cat.get(spec.quantity)
        assert registry.get(spec.sensor_id) == RegisteredSensor(
            sensor_id=spec.sensor_id,
            quantity=quantity,
            range=cat.sensor_range(spec),
            region=spec.region,
            active=spec.active,
            canonical_unit=quantity.unit,
            default_unit=spec.unit,
            interval_s=spec.interval_s,
        )
    assert registry.get("WIDE-1").interval_s == 30  # type: ignore[union-attr]
    assert not registry.get("OLD-1").active  # type: ignore[union-attr]
    # Slotted and without the SensorSpec it came from (a pydantic model per sensor, ~1.2 KB).
    assert not hasattr(registry.get("GAS-CH4-1"), "__dict__")


def test_a_bad_file_raises_before_a_registry_exists(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text(SENSORS_CSV + "GAS-CH4-1,gas.ch4,%LEL,340104,3401041102000011,60,31.85,117.16,active\n")
    with pytest.raises(RegistryError, match="duplicate sensor_id 'GAS-CH4-1'"):
        SensorRegistry.from_files(path, None)
