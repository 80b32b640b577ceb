"""Quantity catalogue and sensor registry: what sensors measure, in which units, within which limits.

The catalogue is domain data (``lifeline/kit/data/quantities.toml``, from the domain reference §4) loaded
into typed models; operators override it with their own TOML file of the same layout. Thresholds there
are defaults (each marked CITED or DEFAULT) that the alert rules start from.

The sensor registry is a CSV file of :class:`SensorSpec` rows. ``SensorSpec`` is a plain value type:
ingest builds it from the registry file today, the assets service will publish it in events later.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "SENSOR_CSV_FIELDS",
    "Basis",
    "CatalogueError",
    "Direction",
    "Domain",
    "Level",
    "Measure",
    "Quantity",
    "QuantityCatalogue",
    "RegistryError",
    "SensorSpec",
    "SensorStatus",
    "ThresholdRule",
    "UnitConversion",
    "UnitError",
    "UnknownQuantityError",
    "iter_sensors",
    "load_quantities",
    "load_sensors",
    "normalise_unit",
    "region_contains",
    "sensors_csv",
    "write_sensors",
]

_REGION_RE = re.compile(r"^\d{6}$")
_FACILITY_RE = re.compile(r"^\d{16}$")


class CatalogueError(ValueError):
    """The quantity catalogue file is malformed or inconsistent."""


class UnitError(ValueError):
    """A unit the quantity cannot convert to its canonical unit."""


class UnknownQuantityError(KeyError):
    """A quantity code that is not in the catalogue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown quantity"


class RegistryError(ValueError):
    """The sensor registry file has invalid rows; ``errors`` lists (line, message) pairs."""

    def __init__(self, path: str, errors: list[tuple[int, str]]) -> None:
        self.path = path
        self.errors = errors
        self.line = errors[0][0] if errors else 0
        super().__init__("\n".join(f"{path}:{line}: {message}" for line, message in errors))


class Domain(StrEnum):
    GAS = "gas"
    WATER = "water"
    DRAINAGE = "drainage"
    HEATING = "heating"
    BRIDGE = "bridge"
    TUNNEL = "tunnel"
    UTILITY_TUNNEL = "utility_tunnel"
    ROAD = "road"
    BUILDING = "building"


class Level(StrEnum):
    """Warning levels, least severe first: IV blue, III yellow, II orange, I red."""

    IV = "IV"
    III = "III"
    II = "II"
    I = "I"  # noqa: E741

    @property
    def severity(self) -> int:
        """1 for IV (blue) up to 4 for I (red)."""
        return _SEVERITY[self]


_SEVERITY = {Level.IV: 1, Level.III: 2, Level.II: 3, Level.I: 4}
LEVELS: tuple[Level, ...] = (Level.IV, Level.III, Level.II, Level.I)


class Direction(StrEnum):
    ABOVE = "above"
    BELOW = "below"
    OUTSIDE = "outside"


class Measure(StrEnum):
    """What a threshold rule compares: the value itself or a figure derived from it."""

    VALUE = "value"
    DEVIATION_PCT = "deviation_pct"
    DROP_PCT = "drop_pct"
    RISE_PCT = "rise_pct"
    RATE_PER_DAY = "rate_per_day"
    RATE_PER_YEAR = "rate_per_year"


class Basis(StrEnum):
    CITED = "CITED"
    DEFAULT = "DEFAULT"


_UNIT_SUBS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile("\u03bc"), "\u00b5"),  # Greek mu → micro sign
    (re.compile("℃"), "°C"),
    (re.compile(r"^degC$"), "°C"),
    (re.compile(r"m3(?!\d)"), "m³"),
    (re.compile(r"s2(?!\d)"), "s²"),
    (re.compile(r"\s+"), ""),
)


def normalise_unit(unit: str) -> str:
    """Return the catalogue spelling of a unit (m3→m³, s2→s², μ→µ, ℃→°C, no spaces); case is kept."""
    for pattern, repl in _UNIT_SUBS:
        unit = pattern.sub(repl, unit)
    return unit


def region_contains(outer: str, inner: str) -> bool:
    """True if GB/T 2260 region ``inner`` is ``outer`` or lies within it (340100 contains 340104)."""
    if outer == inner or outer == "100000":
        return True
    if outer.endswith("0000"):
        return inner[:2] == outer[:2]
    if outer.endswith("00"):
        return inner[:4] == outer[:4]
    return False


class UnitConversion(BaseModel):
    """Linear conversion of an alternative unit: canonical = value × factor + offset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: float
    offset: float = 0.0

    @field_validator("factor")
    @classmethod
    def _positive_factor(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError("factor must be a positive finite number")
        return v

    def to_canonical(self, value: float) -> float:
        """Convert a value in this unit to the canonical unit."""
        return value * self.factor + self.offset

    def from_canonical(self, value: float) -> float:
        """Convert a value in the canonical unit to this unit."""
        return (value - self.offset) / self.factor


_IDENTITY = UnitConversion(factor=1.0)
Band = tuple[float, float]


class ThresholdRule(BaseModel):
    """Default thresholds of one rule, per level, with the direction that fires and their basis."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measure: Measure = Measure.VALUE
    direction: Direction
    levels: dict[Level, float | Band]
    basis: Basis | dict[Level, Basis] = Basis.DEFAULT
    source: str = ""
    note: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ThresholdRule:
        if not self.levels:
            raise ValueError("a threshold rule needs at least one level")
        ordered = self.ordered()
        if self.direction is Direction.OUTSIDE:
            bands: list[Band] = []
            for level, limit in ordered:
                if not isinstance(limit, tuple):
                    raise ValueError(f"level {level}: an 'outside' rule needs a [low, high] band")
                if not limit[0] < limit[1]:
                    raise ValueError(f"level {level}: band low must be below high, got {list(limit)}")
                bands.append(limit)
            for (level, _), (lo_prev, hi_prev), (lo, hi) in zip(ordered[1:], bands, bands[1:], strict=False):
                # A more severe level's band must be wider: it fires further out.
                if not (lo <= lo_prev and hi >= hi_prev and (lo, hi) != (lo_prev, hi_prev)):
                    raise ValueError(f"level {level}: band must widen with severity (IV→I)")
        else:
            values: list[float] = []
            for level, limit in ordered:
                if isinstance(limit, tuple):
                    raise ValueError(f"level {level}: an '{self.direction}' rule needs a single number")
                if not math.isfinite(limit):
                    raise ValueError(f"level {level}: threshold must be finite")
                values.append(limit)
            for (level, _), prev, cur in zip(ordered[1:], values, values[1:], strict=False):
                if self.direction is Direction.ABOVE and not cur > prev:
                    raise ValueError(f"level {level}: 'above' thresholds must increase from IV to I")
                if self.direction is Direction.BELOW and not cur < prev:
                    raise ValueError(f"level {level}: 'below' thresholds must decrease from IV to I")
        if isinstance(self.basis, dict):
            missing = set(self.levels) - set(self.basis)
            extra = set(self.basis) - set(self.levels)
            if missing or extra:
                raise ValueError(
                    f"basis per level must name exactly the rule's levels "
                    f"(missing {sorted(missing)}, extra {sorted(extra)})"
                )
        return self

    def ordered(self) -> list[tuple[Level, float | Band]]:
        """The rule's levels from the least (IV) to the most severe (I)."""
        return [(level, self.levels[level]) for level in LEVELS if level in self.levels]

    def basis_of(self, level: Level) -> Basis:
        """Whether the figure of ``level`` is CITED or a DEFAULT."""
        if isinstance(self.basis, dict):
            return self.basis[level]
        return self.basis

    def fires(self, level: Level, measured: float) -> bool:
        """True if ``measured`` (of this rule's measure, canonical unit) reaches ``level``."""
        limit = self.levels.get(level)
        if limit is None or math.isnan(measured):
            return False
        if isinstance(limit, tuple):
            return measured < limit[0] or measured > limit[1]
        if self.direction is Direction.ABOVE:
            return measured >= limit
        return measured <= limit

    def level_for(self, measured: float) -> Level | None:
        """The most severe level that ``measured`` reaches, or None."""
        for level, _ in reversed(self.ordered()):
            if self.fires(level, measured):
                return level
        return None


class Quantity(BaseModel):
    """One measured quantity: canonical unit, accepted units, plausible range, interval, thresholds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
    domain: Domain
    kind: Literal["analog", "event"] = "analog"
    names: dict[str, str]
    unit: str
    units: dict[str, UnitConversion] = Field(default_factory=dict)
    range: tuple[float, float]
    interval_s: int = Field(gt=0)
    thresholds: tuple[ThresholdRule, ...] = ()
    notes: str = ""

    @field_validator("units", mode="before")
    @classmethod
    def _factor_shorthand(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return {normalise_unit(str(k)): {"factor": c} if isinstance(c, int | float) else c for k, c in v.items()}
        return v

    @field_validator("unit")
    @classmethod
    def _normal_unit(cls, v: str) -> str:
        return normalise_unit(v)

    @model_validator(mode="after")
    def _consistent(self) -> Quantity:
        if self.code.split(".", 1)[0] != self.domain.value:
            raise ValueError(f"code {self.code!r} must start with its domain '{self.domain.value}.'")
        for lang in ("zh-CN", "en"):
            if not self.names.get(lang):
                raise ValueError(f"names must include {lang!r}")
        lo, hi = self.range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"range must be [min, max] with min < max, got {list(self.range)}")
        same = self.units.get(self.unit)
        if same is not None and same != _IDENTITY:
            raise ValueError(f"the canonical unit {self.unit!r} cannot have a conversion")
        for rule in self.thresholds:
            if rule.measure is not Measure.VALUE:
                continue
            for level, limit in rule.ordered():
                for x in limit if isinstance(limit, tuple) else (limit,):
                    if not lo <= x <= hi:
                        raise ValueError(f"threshold {level}={x} lies outside the physical range")
        return self

    @property
    def accepted_units(self) -> tuple[str, ...]:
        """The canonical unit first, then the alternatives."""
        return (self.unit, *(u for u in self.units if u != self.unit))

    def accepts(self, unit: str) -> bool:
        """True if values in ``unit`` can be converted to the canonical unit."""
        u = normalise_unit(unit)
        return u == self.unit or u in self.units

    def _conversion(self, unit: str) -> UnitConversion:
        u = normalise_unit(unit)
        if u == self.unit:
            return _IDENTITY
        conv = self.units.get(u)
        if conv is None:
            raise UnitError(
                f"{self.code}: cannot convert unit {unit!r} to {self.unit!r} "
                f"(accepted: {', '.join(repr(x) for x in self.accepted_units)})"
            )
        return conv

    def convert(self, value: float, unit: str) -> float:
        """Convert ``value`` in ``unit`` to the canonical unit; raises UnitError for unknown units."""
        return self._conversion(unit).to_canonical(value)

    def to_unit(self, value: float, unit: str) -> float:
        """Convert ``value`` in the canonical unit to ``unit``; raises UnitError for unknown units."""
        return self._conversion(unit).from_canonical(value)

    def in_range(self, value: float, unit: str | None = None) -> bool:
        """True if ``value`` (canonical unit unless ``unit`` is given) is physically plausible."""
        v = value if unit is None else self.convert(value, unit)
        return math.isfinite(v) and self.range[0] <= v <= self.range[1]

    def name(self, lang: str = "zh-CN") -> str:
        """Display name in ``lang`` (exact tag, then its language, then English, then the code)."""
        if lang in self.names:
            return self.names[lang]
        base = lang.split("-", 1)[0].lower()
        for tag, text in self.names.items():
            if tag.split("-", 1)[0].lower() == base:
                return text
        return self.names.get("en", self.code)

    def rules(self, measure: Measure | None = None) -> tuple[ThresholdRule, ...]:
        """The default threshold rules, optionally only those of one measure."""
        return tuple(r for r in self.thresholds if measure is None or r.measure is measure)


class SensorStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


class SensorSpec(BaseModel):
    """One registered sensor; ``range_min``/``range_max`` override the quantity's range, in ``unit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensor_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    quantity: str
    unit: str
    region: str = Field(pattern=r"^\d{6}$")
    facility_code: str = Field(pattern=r"^\d{16}$")
    interval_s: int = Field(gt=0, le=7 * 86400)
    lat: float = Field(ge=-90.0, le=90.0)
    lon: float = Field(ge=-180.0, le=180.0)
    status: SensorStatus = SensorStatus.ACTIVE
    range_min: float | None = None
    range_max: float | None = None
    # What relative rules compare with, in the quantity's canonical unit (not the sensor's): the operating
    # pressure a gas regulator holds (deviation_pct), a main's nominal service pressure (drop/rise_pct,
    # instead of a same-hour baseline that needs days of history). Assets keeps them; alerts reads them.
    setpoint: float | None = Field(default=None, allow_inf_nan=False)
    baseline: float | None = Field(default=None, allow_inf_nan=False)

    @field_validator("unit")
    @classmethod
    def _normal_unit(cls, v: str) -> str:
        return normalise_unit(v)

    @model_validator(mode="after")
    def _consistent(self) -> SensorSpec:
        if (self.range_min is None) != (self.range_max is None):
            raise ValueError("range_min and range_max go together")
        if self.range_min is not None and self.range_max is not None and not self.range_min < self.range_max:
            raise ValueError(f"range_min {self.range_min} must be below range_max {self.range_max}")
        fac = self.facility_code[:6]
        if not (region_contains(self.region, fac) or region_contains(fac, self.region)):
            raise ValueError(
                f"facility code {self.facility_code} (region {fac}) is outside the sensor's region {self.region}"
            )
        return self

    @property
    def active(self) -> bool:
        """True unless the sensor is retired."""
        return self.status is SensorStatus.ACTIVE


class QuantityCatalogue:
    """The quantities known to an instance, by code."""

    __slots__ = ("_quantities", "sources")

    def __init__(self, quantities: Iterable[Quantity], sources: tuple[str, ...] = ()) -> None:
        self._quantities: dict[str, Quantity] = {q.code: q for q in quantities}
        self.sources = sources

    def get(self, code: str) -> Quantity:
        """The quantity with ``code``; raises UnknownQuantityError."""
        try:
            return self._quantities[code]
        except KeyError:
            raise UnknownQuantityError(f"unknown quantity {code!r}") from None

    def __contains__(self, code: object) -> bool:
        return code in self._quantities

    def __iter__(self) -> Iterator[Quantity]:
        return iter(self._quantities.values())

    def __len__(self) -> int:
        return len(self._quantities)

    def codes(self) -> list[str]:
        """All quantity codes, sorted."""
        return sorted(self._quantities)

    def in_domain(self, domain: Domain | str) -> list[Quantity]:
        """The quantities of one domain, sorted by code."""
        return [q for code, q in sorted(self._quantities.items()) if q.domain == domain]

    def overlay(self, other: QuantityCatalogue) -> QuantityCatalogue:
        """A catalogue where ``other``'s quantities replace or add to these."""
        return QuantityCatalogue([*self._quantities.values(), *other], (*self.sources, *other.sources))

    def sensor_range(self, spec: SensorSpec) -> tuple[float, float]:
        """Plausible range of a sensor's readings, canonical unit: its override, else the quantity's."""
        q = self.get(spec.quantity)
        if spec.range_min is None or spec.range_max is None:
            return q.range
        return (q.convert(spec.range_min, spec.unit), q.convert(spec.range_max, spec.unit))


def _parse_catalogue(text: str, source: str) -> QuantityCatalogue:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: not valid TOML: {exc}") from exc
    version = doc.get("schema_version", 1)
    if version != 1:
        raise CatalogueError(f"{source}: unsupported schema_version {version!r} (expected 1)")
    blocks = doc.get("quantity", [])
    if not isinstance(blocks, list):
        raise CatalogueError(f"{source}: 'quantity' must be an array of tables ([[quantity]])")
    quantities: list[Quantity] = []
    seen: set[str] = set()
    for i, block in enumerate(blocks, start=1):
        label = f"quantity #{i}" + (f" ({block.get('code')!r})" if isinstance(block, dict) else "")
        try:
            q = Quantity.model_validate(block)
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(block)'}: {err['msg']}" for err in exc.errors()
            )
            raise CatalogueError(f"{source}: {label}: {details}") from exc
        if q.code in seen:
            raise CatalogueError(f"{source}: {label}: duplicate code {q.code!r}")
        seen.add(q.code)
        quantities.append(q)
    return QuantityCatalogue(quantities, (source,))


@functools.cache
def _packaged_catalogue() -> QuantityCatalogue:
    text = resources.files("lifeline.kit").joinpath("data/quantities.toml").read_text(encoding="utf-8")
    return _parse_catalogue(text, "lifeline.kit:data/quantities.toml")


def load_quantities(path: Path | None = None, *, merge: bool = True) -> QuantityCatalogue:
    """Load the packaged catalogue, overlaid by an operator's file (or only that file if merge=False)."""
    if path is None:
        return _packaged_catalogue()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read the catalogue: {exc}") from exc
    own = _parse_catalogue(text, str(path))
    return _packaged_catalogue().overlay(own) if merge else own


SENSOR_CSV_FIELDS: tuple[str, ...] = (
    "sensor_id",
    "quantity",
    "unit",
    "region",
    "facility_code",
    "interval_s",
    "lat",
    "lon",
    "status",
    "range_min",
    "range_max",
    "setpoint",
    "baseline",
)
_REQUIRED_FIELDS = ("sensor_id", "quantity", "region", "facility_code", "lat", "lon")


def _row_to_spec(row: Mapping[str, str | None], catalogue: QuantityCatalogue) -> SensorSpec:
    """Validate one CSV row; raises ValueError with a message meant for an operator."""

    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    sensor_id = cell("sensor_id")
    if not sensor_id:
        raise ValueError("sensor_id is empty")
    code = cell("quantity")
    if code not in catalogue:
        raise ValueError(f"sensor {sensor_id}: unknown quantity {code!r}")
    quantity = catalogue.get(code)
    unit = cell("unit") or quantity.unit
    if not quantity.accepts(unit):
        raise ValueError(
            f"sensor {sensor_id}: unit {unit!r} is not accepted for {code} "
            f"(accepted: {', '.join(repr(u) for u in quantity.accepted_units)})"
        )
    region = cell("region")
    if not _REGION_RE.match(region):
        raise ValueError(f"sensor {sensor_id}: region must be six digits (GB/T 2260), got {region!r}")
    facility = cell("facility_code")
    if not _FACILITY_RE.match(facility):
        raise ValueError(
            f"sensor {sensor_id}: facility_code must be 16 digits "
            f"(6 region + 2 major + 2 minor class + 6 serial), got {facility!r}"
        )
    raw_interval = cell("interval_s")
    if raw_interval:
        try:
            interval = int(raw_interval)
        except ValueError:
            interval = -1
        if not 0 < interval <= 7 * 86400:
            raise ValueError(
                f"sensor {sensor_id}: interval_s must be a whole number of seconds in 1..604800, got {raw_interval!r}"
            )
    else:
        interval = quantity.interval_s
    coords: dict[str, float] = {}
    for name in ("lat", "lon"):
        try:
            coords[name] = float(cell(name))
        except ValueError:
            raise ValueError(f"sensor {sensor_id}: {name} must be a number, got {cell(name)!r}") from None
    status = cell("status") or SensorStatus.ACTIVE.value
    if status not in {s.value for s in SensorStatus}:
        raise ValueError(f"sensor {sensor_id}: status must be 'active' or 'retired', got {status!r}")
    bounds: dict[str, float | None] = {}
    for name in ("range_min", "range_max", "setpoint", "baseline"):
        raw = cell(name)
        try:
            bounds[name] = float(raw) if raw else None
        except ValueError:
            raise ValueError(f"sensor {sensor_id}: {name} must be a number, got {raw!r}") from None
    try:
        spec = SensorSpec(
            sensor_id=sensor_id,
            quantity=code,
            unit=unit,
            region=region,
            facility_code=facility,
            interval_s=interval,
            lat=coords["lat"],
            lon=coords["lon"],
            status=SensorStatus(status),
            range_min=bounds["range_min"],
            range_max=bounds["range_max"],
            setpoint=bounds["setpoint"],
            baseline=bounds["baseline"],
        )
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'row'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ValueError(f"sensor {sensor_id}: {details}") from None
    lo, hi = catalogue.sensor_range(spec)
    if lo < quantity.range[0] or hi > quantity.range[1]:
        raise ValueError(
            f"sensor {sensor_id}: range override [{spec.range_min}, {spec.range_max}] {unit} "
            f"exceeds the physical range of {code} {list(quantity.range)} {quantity.unit}"
        )
    return spec


def load_sensors(path: Path, catalogue: QuantityCatalogue | None = None) -> dict[str, SensorSpec]:
    """Read a sensor registry CSV; raises RegistryError naming every bad line."""
    return {spec.sensor_id: spec for spec in iter_sensors(path, catalogue)}


def iter_sensors(path: Path, catalogue: QuantityCatalogue | None = None) -> Iterator[SensorSpec]:
    """The sensors of a registry CSV one at a time; RegistryError naming every bad line at the end.

    For a consumer that keeps less than the SensorSpec (a pydantic model, ~1.2 KB a sensor): the specs
    are never all alive at once, so their memory is reused from one to the next instead of growing
    the process by the whole census (freed small objects rarely go back to the system). A consumer
    must not act on what it got before the iteration ended: the error comes last.
    """
    cat = catalogue if catalogue is not None else load_quantities()
    source = str(path)
    first_line: dict[str, int] = {}
    errors: list[tuple[int, str]] = []
    try:
        handle = Path(path).open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise RegistryError(source, [(0, f"cannot read the registry: {exc}")]) from exc
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [f for f in _REQUIRED_FIELDS if f not in header]
        if missing:
            raise RegistryError(source, [(1, f"missing column(s): {', '.join(missing)}")])
        reader.fieldnames = header
        line = 1
        for row in reader:
            line = reader.line_num
            if (row.get("sensor_id") or "").lstrip().startswith("#"):
                continue
            if None in row:
                errors.append((line, "more cells than columns"))
                continue
            try:
                spec = _row_to_spec(row, cat)
            except ValueError as exc:
                errors.append((line, str(exc)))
                continue
            if spec.sensor_id in first_line:
                first = first_line[spec.sensor_id]
                errors.append((line, f"duplicate sensor_id {spec.sensor_id!r} (first on line {first})"))
                continue
            first_line[spec.sensor_id] = line
            if not errors:
                yield spec
    if errors:
        raise RegistryError(source, errors)


def _fmt(x: float | int | None) -> str:
    if x is None:
        return ""
    return repr(x) if isinstance(x, float) else str(x)


def sensors_csv(
    sensors: Iterable[SensorSpec],
    *,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """A sensor registry as CSV text; ``extra`` adds columns per sensor id (ignored by load_sensors)."""
    extra = extra or {}
    extra_fields = sorted({k for cols in extra.values() for k in cols})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*SENSOR_CSV_FIELDS, *extra_fields])
    for s in sensors:
        cols = extra.get(s.sensor_id, {})
        writer.writerow(
            [
                s.sensor_id,
                s.quantity,
                s.unit,
                s.region,
                s.facility_code,
                str(s.interval_s),
                _fmt(s.lat),
                _fmt(s.lon),
                s.status.value,
                _fmt(s.range_min),
                _fmt(s.range_max),
                _fmt(s.setpoint),
                _fmt(s.baseline),
                *(cols.get(f, "") for f in extra_fields),
            ]
        )
    return buf.getvalue()


def write_sensors(
    path: Path,
    sensors: Iterable[SensorSpec],
    *,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Write a sensor registry CSV file (see sensors_csv)."""
    Path(path).write_text(sensors_csv(sensors, extra=extra), encoding="utf-8")
