"""The quantity catalogue (domain data, §4 of the domain reference) and the sensor registry CSV."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from lifeline.kit.catalogue import (
    LEVELS,
    Basis,
    CatalogueError,
    Direction,
    Domain,
    Level,
    Measure,
    QuantityCatalogue,
    RegistryError,
    SensorSpec,
    UnitError,
    UnknownQuantityError,
    iter_sensors,
    load_quantities,
    load_sensors,
    region_contains,
    write_sensors,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "launcher" / "src" / "lifeline" / "launcher" / "data" / "sensors-340100.csv"
HEADER = "sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status,range_min,range_max\n"


@pytest.fixture(scope="module")
def cat() -> QuantityCatalogue:
    return load_quantities()


def test_packaged_catalogue_covers_every_domain_and_the_reference_quantities(cat: QuantityCatalogue) -> None:
    assert {q.domain for q in cat} == set(Domain)
    for code in (
        "gas.ch4",
        "gas.pressure",
        "water.pressure",
        "water.flow",
        "water.night_min_flow",
        "drainage.ponding",
        "drainage.pipe_level",
        "drainage.rain",
        "heating.supply_temp",
        "heating.supply_pressure",
        "bridge.deflection",
        "bridge.strain",
        "bridge.vibration",
        "bridge.displacement",
        "bridge.crack_width",
        "bridge.bearing_reaction",
        "bridge.modal_freq",
        "utility_tunnel.o2",
        "utility_tunnel.h2s",
        "utility_tunnel.temperature",
        "utility_tunnel.ch4",
        "water.turbidity",
        "water.chlorine",
        "water.ph",
        "road.settlement",
        "building.tilt",
        "road.cover_tilt",
        "road.cover_open",
        "water.leak_noise",
        "water.leak_flag",
    ):
        q = cat.get(code)
        assert q.name("zh-CN") and q.name("en")
        assert q.interval_s > 0
        assert q.range[0] < q.range[1]


def test_thresholds_are_monotone_in_their_direction(cat: QuantityCatalogue) -> None:
    rules = [(q.code, r) for q in cat for r in q.thresholds]
    assert len(rules) >= 25
    for code, rule in rules:
        ordered = rule.ordered()
        assert [lv for lv, _ in ordered] == [lv for lv in LEVELS if lv in rule.levels], code
        limits = [limit for _, limit in ordered]
        for prev, cur in itertools.pairwise(limits):
            if rule.direction is Direction.ABOVE:
                assert isinstance(cur, float) and isinstance(prev, float) and cur > prev, code
            elif rule.direction is Direction.BELOW:
                assert isinstance(cur, float) and isinstance(prev, float) and cur < prev, code
            else:
                assert isinstance(cur, tuple) and isinstance(prev, tuple), code
                assert cur[0] <= prev[0] and cur[1] >= prev[1] and cur != prev, code
        for level in rule.levels:
            assert rule.basis_of(level) in (Basis.CITED, Basis.DEFAULT)


def test_reference_figures_and_their_basis(cat: QuantityCatalogue) -> None:
    ch4 = cat.get("gas.ch4").rules(Measure.VALUE)[0]
    assert ch4.levels == {Level.IV: 5.0, Level.III: 10.0, Level.II: 25.0, Level.I: 50.0}
    assert ch4.basis_of(Level.II) is Basis.CITED and ch4.basis_of(Level.I) is Basis.CITED
    assert ch4.basis_of(Level.IV) is Basis.DEFAULT
    assert [ch4.level_for(x) for x in (0, 5, 9.9, 10, 30, 50, 99)] == [
        None,
        Level.IV,
        Level.IV,
        Level.III,
        Level.II,
        Level.I,
        Level.I,
    ]
    water = cat.get("water.pressure").thresholds[0]
    assert water.measure is Measure.DROP_PCT and water.level_for(35) is Level.II
    o2 = cat.get("utility_tunnel.o2").thresholds[0]
    assert o2.direction is Direction.OUTSIDE
    assert o2.level_for(20.9) is None and o2.level_for(17.5) is Level.III and o2.level_for(23) is Level.III
    assert cat.get("water.ph").thresholds[0].level_for(6.5) is None  # the band's limits are allowed
    assert cat.get("bridge.crack_width").rules(Measure.RATE_PER_DAY)[0].levels == {Level.III: 0.01}


def test_unit_conversions(cat: QuantityCatalogue) -> None:
    ch4 = cat.get("gas.ch4")
    assert ch4.convert(1, "%vol") == pytest.approx(20.0)
    assert ch4.convert(1000, "ppm") == pytest.approx(2.0)
    assert ch4.convert(10000, "ppm") == pytest.approx(ch4.convert(1, "%vol"))
    assert ch4.convert(12.5, "%LEL") == 12.5
    assert ch4.to_unit(20.0, "%vol") == pytest.approx(1.0)
    wp = cat.get("water.pressure")
    assert wp.convert(100, "kPa") == pytest.approx(0.1)
    assert wp.convert(1, "bar") == pytest.approx(0.1)
    assert cat.get("gas.pressure").convert(0.1, "MPa") == pytest.approx(100.0)
    temp = cat.get("heating.supply_temp")
    assert temp.convert(373.15, "K") == pytest.approx(100.0)
    assert temp.convert(212, "°F") == pytest.approx(100.0)
    assert temp.convert(60, "℃") == 60  # spelling variants are normalised
    assert temp.to_unit(0.0, "K") == pytest.approx(273.15)
    assert cat.get("drainage.ponding").convert(0.25, "m") == pytest.approx(25.0)
    assert cat.get("drainage.ponding").convert(40, "mm") == pytest.approx(4.0)
    assert cat.get("water.flow").convert(10, "L/s") == pytest.approx(36.0)
    assert cat.get("water.flow").convert(5, "m3/h") == 5
    assert cat.get("bridge.strain").accepts("με")  # Greek mu as well as the micro sign


def test_unconvertible_units_raise_unit_error(cat: QuantityCatalogue) -> None:
    with pytest.raises(UnitError, match=r"gas\.ch4"):
        cat.get("gas.ch4").convert(1, "kPa")
    with pytest.raises(UnitError):
        cat.get("water.pressure").convert(1, "mpa")  # millipascal-looking: units are case-sensitive
    with pytest.raises(UnitError):
        cat.get("drainage.pipe_level").convert(1.2, "m")  # % of well depth needs the well's depth
    with pytest.raises(UnknownQuantityError):
        cat.get("gas.nope")


def test_physical_range(cat: QuantityCatalogue) -> None:
    ch4 = cat.get("gas.ch4")
    assert ch4.in_range(0) and ch4.in_range(100) and ch4.in_range(42.0)
    assert not ch4.in_range(-0.1) and not ch4.in_range(100.1)
    assert not ch4.in_range(math.nan) and not ch4.in_range(math.inf)
    assert ch4.in_range(4.9, "%vol") and not ch4.in_range(5.1, "%vol")
    assert cat.get("water.pressure").in_range(2.5) and not cat.get("water.pressure").in_range(2.6)
    assert cat.get("drainage.ponding").range == (0.0, 300.0)


def test_names_by_language(cat: QuantityCatalogue) -> None:
    q = cat.get("water.pressure")
    assert q.name() == q.name("zh-CN") == "供水管网压力"
    assert q.name("zh") == "供水管网压力"
    assert q.name("en") == "Water-supply pressure"
    assert q.name("fr") == "Water-supply pressure"


def test_operator_file_replaces_a_quantity_and_adds_its_own(tmp_path: Path, cat: QuantityCatalogue) -> None:
    own = tmp_path / "quantities.toml"
    own.write_text(
        """
[[quantity]]
code = "gas.ch4"
domain = "gas"
names = { "zh-CN" = "甲烷", en = "Methane" }
unit = "%LEL"
units = { "%vol" = 20 }
range = [0, 100]
interval_s = 30

[[quantity.thresholds]]
direction = "above"
levels = { III = 8, II = 20, I = 40 }
basis = "DEFAULT"

[[quantity]]
code = "water.hardness"
domain = "water"
names = { "zh-CN" = "总硬度", en = "Total hardness" }
unit = "mg/L"
range = [0, 1000]
interval_s = 3600
""",
        encoding="utf-8",
    )
    merged = load_quantities(own)
    ch4 = merged.get("gas.ch4")
    assert ch4.interval_s == 30 and ch4.name("en") == "Methane"
    assert ch4.thresholds[0].levels == {Level.III: 8, Level.II: 20, Level.I: 40}
    assert not ch4.accepts("ppm")  # the whole block is replaced, not merged
    assert "water.hardness" in merged
    assert merged.get("water.pressure") == cat.get("water.pressure")
    assert len(merged) == len(cat) + 1
    alone = load_quantities(own, merge=False)
    assert alone.codes() == ["gas.ch4", "water.hardness"]
    assert cat.get("gas.ch4").interval_s == 60  # the packaged catalogue is untouched


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ('levels = { IV = 10, III = 5 }\ndirection = "above"', "must increase"),
        ('levels = { IV = 10, III = 5 }\ndirection = "below"\nmeasure = "drop_pct"', None),
        ('levels = { III = [18, 22], I = [19, 21] }\ndirection = "outside"', "widen"),
        ('levels = { III = 5 }\ndirection = "outside"', "band"),
        ('levels = { III = 500 }\ndirection = "above"', "outside the physical range"),
        ('levels = { III = 5 }\ndirection = "above"\nbasis = { II = "CITED" }', "basis per level"),
    ],
)
def test_inconsistent_operator_file_is_refused(tmp_path: Path, block: str, message: str | None) -> None:
    own = tmp_path / "q.toml"
    own.write_text(
        f"""
[[quantity]]
code = "gas.ch4"
domain = "gas"
names = {{ "zh-CN" = "甲烷", en = "Methane" }}
unit = "%LEL"
range = [0, 100]
interval_s = 30

[[quantity.thresholds]]
{block}
""",
        encoding="utf-8",
    )
    if message is None:
        assert load_quantities(own, merge=False).get("gas.ch4").thresholds[0].level_for(6) is Level.IV
        return
    with pytest.raises(CatalogueError, match=message) as info:
        load_quantities(own)
    assert "gas.ch4" in str(info.value) and str(own) in str(info.value)


def test_catalogue_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[quantity]]\ncode = 'x.y'\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="quantity #1"):
        load_quantities(bad)
    bad.write_text("not toml = = 1", encoding="utf-8")
    with pytest.raises(CatalogueError, match="TOML"):
        load_quantities(bad)
    bad.write_text(
        '[[quantity]]\ncode = "gas.x"\ndomain = "water"\nnames = { "zh-CN" = "x", en = "x" }\n'
        'unit = "m"\nrange = [0, 1]\ninterval_s = 1\n',
        encoding="utf-8",
    )
    with pytest.raises(CatalogueError, match="must start with its domain"):
        load_quantities(bad)


# ───────────────────────── sensor registry ─────────────────────────


def test_sample_census_loads(cat: QuantityCatalogue) -> None:
    sensors = load_sensors(SAMPLE, cat)
    assert 200 <= len(sensors) <= 300
    assert {cat.get(s.quantity).domain for s in sensors.values()} == set(Domain)
    for s in sensors.values():
        assert s.facility_code[:6] in {"340100", "340102", "340103", "340104", "340111"}
        assert region_contains("340100", s.region)
        assert 31.6 < s.lat < 32.0 and 117.0 < s.lon < 117.5
        assert s.interval_s == cat.get(s.quantity).interval_s
    assert any(not s.active for s in sensors.values())
    assert any(s.unit != cat.get(s.quantity).unit for s in sensors.values())


def test_registry_errors_name_the_line(tmp_path: Path, cat: QuantityCatalogue) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text(
        HEADER
        + "S-1,gas.ch4,%LEL,340104,3401041102000001,60,31.85,117.2,active,,\n"  # line 2: fine
        + "S-2,gas.methane,%LEL,340104,3401041102000002,60,31.85,117.2,active,,\n"  # 3: unknown quantity
        + "S-3,gas.ch4,%LEL,3401,3401041102000003,60,31.85,117.2,active,,\n"  # 4: bad region
        + "S-4,gas.ch4,%LEL,340104,3401041102000004,0,31.85,117.2,active,,\n"  # 5: bad interval
        + "S-5,gas.ch4,%LEL,340104,3401041102000005,1.5,31.85,117.2,active,,\n"  # 6: bad interval
        + "S-1,gas.ch4,%LEL,340104,3401041102000006,60,31.85,117.2,active,,\n"  # 7: duplicate id
        + "S-7,gas.ch4,kPa,340104,3401041102000007,60,31.85,117.2,active,,\n"  # 8: unit
        + "S-8,gas.ch4,%LEL,340104,34010411020000,60,31.85,117.2,active,,\n"  # 9: facility code
        + "S-9,gas.ch4,%LEL,340104,3401041102000009,60,31.85,117.2,sleeping,,\n"  # 10: status
        + "S-10,gas.ch4,%LEL,340104,3402041102000010,60,31.85,117.2,active,,\n"  # 11: other region
        + "S-11,gas.ch4,%LEL,340104,3401041102000011,60,north,117.2,active,,\n",  # 12: lat
        encoding="utf-8",
    )
    with pytest.raises(RegistryError) as info:
        load_sensors(path, cat)
    err = info.value
    lines = dict(err.errors)
    assert sorted(lines) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "unknown quantity 'gas.methane'" in lines[3]
    assert "six digits" in lines[4]
    assert "interval_s" in lines[5] and "interval_s" in lines[6]
    assert "duplicate sensor_id 'S-1' (first on line 2)" in lines[7]
    assert "'kPa' is not accepted for gas.ch4" in lines[8]
    assert "16 digits" in lines[9]
    assert "status" in lines[10]
    assert "outside the sensor's region" in lines[11]
    assert "lat" in lines[12]
    assert f"{path}:3: " in str(err) and err.line == 3


def test_iter_sensors_yields_nothing_after_a_bad_line_and_names_every_bad_line_at_the_end(
    tmp_path: Path, cat: QuantityCatalogue
) -> None:
    # For consumers that keep less than the specs (ingest's registry): one spec at a time, the error last.
    path = tmp_path / "sensors.csv"
    path.write_text(
        HEADER
        + "S-1,gas.ch4,%LEL,340104,3401041102000001,60,31.85,117.2,active,,\n"
        + "S-2,gas.ch4,%LEL,3401,3401041102000002,60,31.85,117.2,active,,\n"  # 3: bad region
        + "S-3,gas.ch4,%LEL,340104,3401041102000003,60,31.85,117.2,active,,\n"
        + "S-1,gas.ch4,%LEL,340104,3401041102000004,60,31.85,117.2,active,,\n",  # 5: duplicate id
        encoding="utf-8",
    )
    got = []
    with pytest.raises(RegistryError) as info:
        for spec in iter_sensors(path, cat):
            got.append(spec.sensor_id)
    assert got == ["S-1"], "nothing after the first bad line"
    assert sorted(dict(info.value.errors)) == [3, 5]
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "S-1,gas.ch4,%LEL,340104,3401041102000001,60,31.85,117.2,active,,\n", encoding="utf-8")
    assert list(iter_sensors(good, cat)) == list(load_sensors(good, cat).values())


def test_registry_missing_columns_and_defaults(tmp_path: Path, cat: QuantityCatalogue) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text("sensor_id,quantity,region\nS-1,gas.ch4,340104\n", encoding="utf-8")
    with pytest.raises(RegistryError, match=r":1: missing column\(s\): facility_code, lat, lon"):
        load_sensors(path, cat)
    path.write_text(
        "sensor_id,quantity,region,facility_code,lat,lon,note\n"
        "# a comment row\n"
        "S-1,water.pressure,340104,3401041201000001,31.85,117.2,extra columns are ignored\n",
        encoding="utf-8",
    )
    (spec,) = load_sensors(path, cat).values()
    assert spec.unit == "MPa" and spec.interval_s == 60 and spec.active and spec.range_min is None


def test_range_override_is_in_the_sensor_unit(tmp_path: Path, cat: QuantityCatalogue) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text(
        HEADER + "P-1,gas.pressure,MPa,340100,3401041101000001,60,31.85,117.2,active,0,1.6\n",
        encoding="utf-8",
    )
    spec = load_sensors(path, cat)["P-1"]
    assert cat.sensor_range(spec) == pytest.approx((0.0, 1600.0))
    path.write_text(
        HEADER + "P-1,gas.pressure,MPa,340100,3401041101000001,60,31.85,117.2,active,0,16\n",
        encoding="utf-8",
    )
    with pytest.raises(RegistryError, match=r":2: .*exceeds the physical range"):
        load_sensors(path, cat)


def test_setpoint_and_baseline_are_read_in_the_canonical_unit(tmp_path: Path, cat: QuantityCatalogue) -> None:
    # What relative rules compare with (deviation_pct: setpoint; drop/rise_pct: baseline): optional, a
    # finite number, in the quantity's unit whatever the sensor reports in (a kPa gauge, MPa baseline).
    header = HEADER.rstrip("\n") + ",setpoint,baseline\n"
    path = tmp_path / "sensors.csv"
    path.write_text(
        header
        + "G-1,gas.pressure,MPa,340100,3401041101000001,60,31.85,117.2,active,,,300,\n"
        + "W-1,water.pressure,kPa,340100,3401041201000001,60,31.85,117.2,active,,,,0.42\n"
        + "W-2,water.pressure,MPa,340100,3401041201000002,60,31.85,117.2,active,,,,\n",
        encoding="utf-8",
    )
    got = load_sensors(path, cat)
    assert (got["G-1"].setpoint, got["G-1"].baseline) == (300.0, None)
    assert (got["W-1"].setpoint, got["W-1"].baseline) == (None, 0.42)
    assert (got["W-2"].setpoint, got["W-2"].baseline) == (None, None)
    for bad, why in (("abc", "must be a number"), ("nan", "finite"), ("inf", "finite")):
        path.write_text(header + f"G-1,gas.pressure,kPa,340100,3401041101000001,60,31.85,117.2,active,,,{bad},\n")
        with pytest.raises(RegistryError, match=rf":2: .*setpoint.*{why}|:2: .*{why}"):
            load_sensors(path, cat)


def test_written_registry_reads_back(tmp_path: Path, cat: QuantityCatalogue) -> None:
    sensors = load_sensors(SAMPLE, cat)
    out = tmp_path / "copy.csv"
    write_sensors(out, sensors.values(), extra={"HF-GS-CH4-001": {"note": "对面是学校"}})
    assert load_sensors(out, cat) == sensors


def test_sensor_spec_is_a_plain_value() -> None:
    spec = SensorSpec(
        sensor_id="S-1",
        quantity="gas.ch4",
        unit="%LEL",
        region="340100",
        facility_code="3401041102000001",
        interval_s=60,
        lat=31.82,
        lon=117.23,
    )
    assert SensorSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValueError, match="go together"):
        SensorSpec.model_validate({**spec.model_dump(), "range_min": 1.0})
