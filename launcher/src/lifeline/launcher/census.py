"""The sample census of Hefei (合肥, 340100) and Wuhu (芜湖, 340200): the demo's one source of assets.

    lifeline census                       # rewrite the packaged files (launcher/.../data/)
    lifeline census --out DIR             # write them elsewhere
    lifeline census --check               # fail if the packaged files are not what the generator makes
    python -m lifeline.launcher.census …  # the same

Per city it writes ``units-<region>.geojson`` (responsible units with contacts; features without a
place), ``facilities-<region>.geojson`` (a FeatureCollection; feature id = facility code),
``sensors-<region>.csv`` (the sensor registry in the kit's :func:`~lifeline.kit.catalogue.sensors_csv`
layout — the simulator drives exactly these sensors), ``links-<region>.csv`` (directed topology, upstream
→ downstream) and ``risks-<region>.geojson`` (the risk-source register). Each is a file the assets bulk
import (``POST /v1/import/{entity}``) takes as it is; :func:`load_census` imports them into a running
assets service.

The census is SYNTHETIC: plausible positions along real corridors of the two cities (coordinates
approximate, CGCS2000 ≈ WGS84), invented facilities, serials, attributes and contacts (phone numbers are
not real). Deterministic for a given seed. Facility codes are 16 digits: 6 region (GB/T 2260 district) +
2 major class + 2 minor class + 6 serial; only the shape and the water-manhole-cover class 01/01 come from
the domain reference, the other class numbers (:data:`CLASSES`) are a DEFAULT convention of this sample.

Hefei's monitored facilities and their sensors come first and consume the seeded random stream exactly
as the first sample did, so their codes and sensor ids (``HF-GS-CH4-001`` …) stay stable; everything
added since (valves, stations, pipes, outfalls, units, links, risk sources, attributes) draws from
separate streams keyed by the seed.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import random
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifeline.kit.catalogue import (
    QuantityCatalogue,
    SensorSpec,
    SensorStatus,
    load_quantities,
    load_sensors,
    sensors_csv,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CITIES",
    "CLASSES",
    "ENTITIES",
    "Census",
    "CensusLoadError",
    "Facility",
    "LoadStats",
    "census_files",
    "generate",
    "load_census",
    "main",
    "packaged_dir",
    "read_census",
    "render",
]

log = logging.getLogger("lifeline.launcher.census")

LatLon = tuple[float, float]

# DEFAULT class convention of this sample: (major, minor) -> (domain, name).
CLASSES: dict[tuple[str, str], tuple[str, str]] = {
    ("01", "01"): ("road", "上水井盖"),  # water manhole cover (the reference's example 3205080101000001)
    ("01", "02"): ("road", "污水井盖"),
    ("01", "03"): ("road", "雨水井盖"),
    ("11", "01"): ("gas", "燃气管段"),
    ("11", "02"): ("gas", "燃气相邻地下空间"),
    ("11", "03"): ("gas", "燃气场站"),
    ("11", "04"): ("gas", "燃气调压设施"),
    ("11", "05"): ("gas", "燃气阀门"),
    ("12", "01"): ("water", "供水管段"),
    ("12", "02"): ("water", "供水计量分区(DMA)入口"),
    ("12", "03"): ("water", "水质监测点"),
    ("12", "04"): ("water", "供水泵站"),
    ("12", "05"): ("water", "供水阀门"),
    ("13", "01"): ("drainage", "易涝积水点"),
    ("13", "02"): ("drainage", "排水检查井"),
    ("13", "03"): ("drainage", "雨量站"),
    ("13", "04"): ("drainage", "河道水位站"),
    ("13", "05"): ("drainage", "排水管段"),
    ("13", "06"): ("drainage", "排水口"),
    ("14", "01"): ("heating", "供热换热站"),
    ("14", "02"): ("heating", "供热管段"),
    ("14", "03"): ("heating", "供热热源"),
    ("15", "01"): ("utility_tunnel", "综合管廊舱段"),
    ("21", "01"): ("bridge", "桥梁"),
    ("21", "02"): ("tunnel", "隧道"),
    ("21", "03"): ("road", "道路"),
    ("31", "01"): ("building", "房屋"),
}
# Classes drawn as lines (GeoJSON LineString); every other facility is a point.
LINE_CLASSES = {("11", "01"), ("12", "01"), ("13", "05"), ("14", "02"), ("15", "01")}

DOMAIN_ABBR = {
    "gas": "GS",
    "water": "WS",
    "drainage": "DR",
    "heating": "HT",
    "bridge": "BR",
    "tunnel": "TN",
    "utility_tunnel": "UT",
    "road": "RD",
    "building": "BD",
}


@functools.cache
def catalogue() -> QuantityCatalogue:
    """The packaged quantity catalogue (loaded on first use: `lifeline --help` stays fast)."""
    return load_quantities()


# Deadlines and dates in the census are fixed, not "now + …", so that the files never change by themselves.
_EPOCH_2026 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
_DAY_MS = 86_400_000
ENTITIES = ("units", "facilities", "sensors", "links", "risks")
_EXT = {"units": "geojson", "facilities": "geojson", "sensors": "csv", "links": "csv", "risks": "geojson"}


# ───────────────────────────────────────── geometry helpers ─────────────────────────────────────────


def along(line: Sequence[LatLon], frac: float) -> LatLon:
    """Point at fraction ``frac`` of a polyline's length."""
    segs = [math.hypot(b[0] - a[0], (b[1] - a[1]) * math.cos(math.radians(a[0]))) for a, b in itertools.pairwise(line)]
    target = max(0.0, min(1.0, frac)) * sum(segs)
    for (a, b), length in zip(itertools.pairwise(line), segs, strict=True):
        if target <= length or length == 0:
            k = target / length if length else 0.0
            return (a[0] + (b[0] - a[0]) * k, a[1] + (b[1] - a[1]) * k)
        target -= length
    return line[-1]


def offset(rng: random.Random, lat: float, lon: float, lo_m: float, hi_m: float) -> LatLon:
    """A point between lo_m and hi_m metres away in a random direction."""
    r = rng.uniform(lo_m, hi_m)
    a = rng.uniform(0, 2 * math.pi)
    dlat = r * math.cos(a) / 111_320.0
    dlon = r * math.sin(a) / (111_320.0 * math.cos(math.radians(lat)))
    return (lat + dlat, lon + dlon)


def distance_m(a: LatLon, b: LatLon) -> float:
    """Haversine distance between two (lat, lon) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


def spread(n: int, rng: random.Random, margin: float = 0.06) -> list[float]:
    """n roughly even fractions along a line, with a little jitter."""
    step = (1 - 2 * margin) / max(1, n - 1) if n > 1 else 0.0
    return [min(1.0, max(0.0, margin + i * step + rng.uniform(-0.2, 0.2) * step)) for i in range(n)]


def _segment_line(line: Sequence[LatLon], frac: float, at: LatLon, half_m: float) -> list[LatLon]:
    """A short stretch of the corridor's direction through ``at`` (a pipe segment drawn along its road)."""
    a, b = along(line, max(0.0, frac - 0.02)), along(line, min(1.0, frac + 0.02))
    dy, dx = b[0] - a[0], (b[1] - a[1]) * math.cos(math.radians(a[0]))
    norm = math.hypot(dy, dx) or 1.0
    k = half_m / 111_320.0 / norm
    return [
        (at[0] - dy * k, at[1] - dx * k / math.cos(math.radians(at[0]))),
        at,
        (at[0] + dy * k, at[1] + dx * k / math.cos(math.radians(at[0]))),
    ]


# ───────────────────────────────────────── the cities ─────────────────────────────────────────


@dataclass(frozen=True)
class City:
    """Where a city's census goes and how much of each thing it has."""

    region: str
    name: str
    prefix: str  # of sensor ids
    districts: dict[str, str]
    district_of: Callable[[float, float], str]
    bbox: tuple[float, float, float, float]  # lon_min, lat_min, lon_max, lat_max
    corridors: dict[str, list[LatLon]]
    gas_mains: dict[str, int]
    water_mains: dict[str, int]
    dmas: int
    night_flow_meters: int
    quality_sites: int
    leak_loggers: int
    ponding: int
    wells: int
    gauges: list[tuple[str, LatLon]]
    river: tuple[str, list[LatLon]]
    heating_roads: list[str]
    heating_stations: int
    bridges: list[tuple[str, LatLon]]
    tunnels: list[tuple[str, LatLon]]
    utility_tunnel: tuple[str, str]  # road, name
    settlement_roads: list[str]
    settlements: int
    covers: int
    old_housing: LatLon
    buildings: int
    gate_stations: list[tuple[str, LatLon]]
    water_plants: list[tuple[str, LatLon]]
    heat_source: tuple[str, LatLon]
    units: dict[str, tuple[str, str]]  # domain -> (unit id, name); bridge also covers tunnel and road
    phone_prefix: str
    bridge_design: dict[str, dict[str, Any]] = field(default_factory=dict)


def _hefei_district(lat: float, lon: float) -> str:
    """Rough district of a point in central Hefei (good enough for a synthetic sample)."""
    if lon < 117.235 or (lat < 31.84 and lon < 117.265):
        return "340104"  # 蜀山 (west and south-west)
    if lat >= 31.855 and lon < 117.300:
        return "340103"  # 庐阳 (north-centre)
    if lat >= 31.840:
        return "340102"  # 瑶海 (east)
    return "340111"  # 包河 (south-east)


def _wuhu_district(lat: float, lon: float) -> str:
    """Rough district of a point in central Wuhu."""
    if lat >= 31.36 or (lat >= 31.33 and lon > 118.41):
        return "340207"  # 鸠江 (north and north-east)
    if lat < 31.32:
        return "340209"  # 弋江 (south)
    return "340202"  # 镜湖 (centre)


_HEFEI_CORRIDORS: dict[str, list[LatLon]] = {
    "长江路": [(31.853, 117.150), (31.861, 117.230), (31.864, 117.290), (31.870, 117.340)],
    "金寨路": [(31.868, 117.268), (31.830, 117.262), (31.780, 117.255), (31.745, 117.250)],
    "徽州大道": [(31.860, 117.292), (31.800, 117.290), (31.745, 117.288)],
    "马鞍山路": [(31.858, 117.305), (31.780, 117.310)],
    "潜山路": [(31.880, 117.220), (31.790, 117.226)],
    "望江路": [(31.835, 117.160), (31.835, 117.260), (31.830, 117.330)],
    "黄山路": [(31.845, 117.170), (31.846, 117.262)],
    "繁华大道": [(31.765, 117.180), (31.770, 117.260), (31.775, 117.330)],
    "包河大道": [(31.850, 117.330), (31.760, 117.330)],
    "蒙城路": [(31.910, 117.270), (31.866, 117.272)],
    "临泉路": [(31.885, 117.290), (31.890, 117.360)],
}

HEFEI = City(
    region="340100",
    name="合肥市",
    prefix="HF",
    districts={"340102": "瑶海区", "340103": "庐阳区", "340104": "蜀山区", "340111": "包河区"},
    district_of=_hefei_district,
    bbox=(116.95, 31.60, 117.55, 32.05),
    corridors=_HEFEI_CORRIDORS,
    gas_mains={"长江路": 6, "金寨路": 5, "望江路": 4, "临泉路": 3, "徽州大道": 3},
    water_mains={"金寨路": 6, "长江路": 5, "徽州大道": 4, "马鞍山路": 4, "潜山路": 4, "繁华大道": 3},
    dmas=14,
    night_flow_meters=8,
    quality_sites=6,
    leak_loggers=8,
    ponding=15,
    wells=20,
    gauges=[
        ("瑶海区", (31.870, 117.320)),
        ("庐阳区", (31.880, 117.265)),
        ("蜀山区", (31.850, 117.190)),
        ("包河区", (31.790, 117.300)),
        ("政务区", (31.818, 117.225)),
        ("滨湖新区", (31.745, 117.290)),
    ],
    river=("南淝河", [(31.905, 117.225), (31.872, 117.290), (31.830, 117.350)]),
    heating_roads=["蒙城路", "临泉路", "长江路", "潜山路"],
    heating_stations=8,
    bridges=[
        ("金寨路高架桥", along(_HEFEI_CORRIDORS["金寨路"], 0.55)),
        ("长江东路南淝河大桥", (31.8655, 117.3035)),
        ("徽州大道高架桥", along(_HEFEI_CORRIDORS["徽州大道"], 0.5)),
    ],
    tunnels=[
        ("黄山路下穿隧道", along(_HEFEI_CORRIDORS["黄山路"], 0.7)),
        ("繁华大道隧道", along(_HEFEI_CORRIDORS["繁华大道"], 0.35)),
    ],
    utility_tunnel=("繁华大道", "繁华大道综合管廊"),
    settlement_roads=["金寨路", "繁华大道", "长江路", "包河大道"],
    settlements=8,
    covers=10,
    old_housing=(31.855, 117.28),
    buildings=6,
    gate_stations=[("大房郢门站", (31.915, 117.245)), ("滨湖高中压调压站", (31.752, 117.305))],
    water_plants=[("第四水厂送水泵站", (31.905, 117.205)), ("第六水厂送水泵站", (31.782, 117.205))],
    heat_source=("合肥热电厂", (31.905, 117.300)),
    units={
        "gas": ("HF-GAS", "合肥燃气集团有限公司"),
        "water": ("HF-WATER", "合肥供水集团有限公司"),
        "drainage": ("HF-DRAIN", "合肥市排水管理办公室"),
        "heating": ("HF-HEAT", "合肥热电集团有限公司"),
        "bridge": ("HF-BRIDGE", "合肥市市政设施管理中心"),
        "utility_tunnel": ("HF-UTUNNEL", "合肥市综合管廊投资运营有限公司"),
        "building": ("HF-HOUSE", "合肥市房屋安全鉴定管理中心"),
    },
    phone_prefix="0551-6",
    bridge_design={
        "长江东路南淝河大桥": {"structure": "预应力混凝土连续梁桥", "main_span_m": 60, "length_m": 380, "year": 2004},
    },
)

_WUHU_CORRIDORS: dict[str, list[LatLon]] = {
    "北京路": [(31.345, 118.356), (31.347, 118.390), (31.350, 118.432)],
    "中江大道": [(31.420, 118.420), (31.350, 118.425), (31.290, 118.405)],
    "九华山路": [(31.372, 118.378), (31.330, 118.372), (31.290, 118.370)],
    "长江路": [(31.400, 118.350), (31.350, 118.357), (31.300, 118.352)],
    "赭山路": [(31.356, 118.362), (31.352, 118.398)],
    "银湖路": [(31.402, 118.395), (31.345, 118.392)],
    "峨山路": [(31.306, 118.356), (31.310, 118.420)],
    "花津路": [(31.332, 118.398), (31.282, 118.396)],
}

WUHU = City(
    region="340200",
    name="芜湖市",
    prefix="WH",
    districts={"340202": "镜湖区", "340207": "鸠江区", "340209": "弋江区"},
    district_of=_wuhu_district,
    bbox=(118.20, 31.15, 118.60, 31.55),
    corridors=_WUHU_CORRIDORS,
    gas_mains={"北京路": 4, "九华山路": 4, "中江大道": 3, "银湖路": 3},
    water_mains={"北京路": 4, "中江大道": 4, "九华山路": 3, "花津路": 3, "长江路": 3},
    dmas=8,
    night_flow_meters=5,
    quality_sites=4,
    leak_loggers=5,
    ponding=10,
    wells=12,
    gauges=[
        ("镜湖区", (31.340, 118.378)),
        ("鸠江区", (31.385, 118.405)),
        ("弋江区", (31.300, 118.385)),
        ("城东新区", (31.340, 118.440)),
    ],
    river=("青弋江", [(31.298, 118.432), (31.322, 118.392), (31.336, 118.354)]),
    heating_roads=["中江大道", "银湖路"],
    heating_stations=4,
    bridges=[
        ("芜湖长江大桥", (31.392, 118.338)),
        ("青弋江中江桥", (31.3305, 118.371)),
        ("北京路高架桥", along(_WUHU_CORRIDORS["北京路"], 0.7)),
    ],
    tunnels=[("城南过江隧道", (31.296, 118.345)), ("赭山路下穿通道", along(_WUHU_CORRIDORS["赭山路"], 0.5))],
    utility_tunnel=("中江大道", "中江大道综合管廊"),
    settlement_roads=["北京路", "中江大道", "九华山路"],
    settlements=5,
    covers=6,
    old_housing=(31.343, 118.372),
    buildings=4,
    gate_stations=[("鸠江门站", (31.415, 118.440))],
    water_plants=[("杨家门水厂送水泵站", (31.372, 118.352)), ("二水厂送水泵站", (31.305, 118.350))],
    heat_source=("经开区热电联产热源厂", (31.412, 118.432)),
    units={
        "gas": ("WH-GAS", "芜湖中燃城市燃气发展有限公司"),
        "water": ("WH-WATER", "芜湖华衍水务有限公司"),
        "drainage": ("WH-DRAIN", "芜湖市排水管理处"),
        "heating": ("WH-HEAT", "芜湖经开区热力有限公司"),
        "bridge": ("WH-BRIDGE", "芜湖市市政设施管理处"),
        "utility_tunnel": ("WH-UTUNNEL", "芜湖市城市综合管廊运营有限公司"),
        "building": ("WH-HOUSE", "芜湖市房屋安全鉴定中心"),
    },
    phone_prefix="0553-3",
    bridge_design={
        # The real bridge's figures (public): road-rail, low-tower cable-stayed, 312 m main span, opened 2000.
        "芜湖长江大桥": {"structure": "公铁两用低塔斜拉桥", "main_span_m": 312, "length_m": 6078, "year": 2000},
    },
)

CITIES: dict[str, City] = {c.region: c for c in (HEFEI, WUHU)}


# ───────────────────────────────────────── the census ─────────────────────────────────────────


@dataclass
class Facility:
    code: str
    region: str
    major: str
    minor: str
    name: str
    lat: float
    lon: float
    line: list[LatLon] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    unit_id: str | None = None
    status: str = "in_service"

    @property
    def kind(self) -> str:
        return CLASSES[(self.major, self.minor)][0]

    @property
    def class_name(self) -> str:
        return CLASSES[(self.major, self.minor)][1]

    @property
    def point(self) -> LatLon:
        return (self.lat, self.lon)

    def geometry(self) -> dict[str, Any]:
        if self.line:
            return {"type": "LineString", "coordinates": [[round(lon, 6), round(lat, 6)] for lat, lon in self.line]}
        return {"type": "Point", "coordinates": [self.lon, self.lat]}


@dataclass
class Census:
    """One city's census: units, facilities, sensors, links and risk sources."""

    city: City
    rng: random.Random
    facilities: list[Facility] = field(default_factory=list)
    sensors: list[SensorSpec] = field(default_factory=list)
    units: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    risks: list[dict[str, Any]] = field(default_factory=list)
    _serial: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    @property
    def region(self) -> str:
        return self.city.region

    def facility(
        self, major: str, minor: str, name: str, lat: float, lon: float, region: str | None = None
    ) -> Facility:
        region = region or self.city.district_of(lat, lon)
        key = (region, major, minor)
        self._serial[key] = self._serial.get(key, 0) + 1
        code = f"{region}{major}{minor}{self._serial[key]:06d}"
        fac = Facility(code, region, major, minor, name, round(lat, 6), round(lon, 6))
        self.facilities.append(fac)
        return fac

    def sensor(
        self,
        quantity: str,
        fac: Facility,
        *,
        near_m: float = 0.0,
        unit: str | None = None,
        range_: tuple[float, float] | None = None,
    ) -> SensorSpec:
        q = catalogue().get(quantity)
        domain, name = quantity.split(".", 1)
        prefix = f"{self.city.prefix}-{DOMAIN_ABBR[domain]}-{name.upper()}"
        self._count[prefix] = self._count.get(prefix, 0) + 1
        lat, lon = (fac.lat, fac.lon) if near_m <= 0 else offset(self.rng, fac.lat, fac.lon, 2.0, near_m)
        sensor_id = f"{prefix}-{self._count[prefix]:03d}"
        spec = SensorSpec(
            sensor_id=sensor_id,
            quantity=quantity,
            unit=unit or q.unit,
            region=fac.region,
            facility_code=fac.code,
            interval_s=q.interval_s,
            lat=round(lat, 6),
            lon=round(lon, 6),
            range_min=range_[0] if range_ else None,
            range_max=range_[1] if range_ else None,
            **nominal(quantity, sensor_id),
        )
        self.sensors.append(spec)
        return spec

    def link(self, upstream: Facility, downstream: Facility, kind: str) -> None:
        self.links.append(
            {
                "id": f"LK-{self.region}-{len(self.links) + 1:04d}",
                "from_code": upstream.code,
                "to_code": downstream.code,
                "kind": kind,
            }
        )

    def of_class(self, major: str, minor: str) -> list[Facility]:
        return [f for f in self.facilities if (f.major, f.minor) == (major, minor)]

    def nearest(self, point: LatLon, candidates: Iterable[Facility]) -> Facility:
        return min(candidates, key=lambda f: distance_m(point, f.point))


# Operating pressures of medium-pressure gas mains (B up to 0.2 MPa, A up to 0.4 MPa), in kPa.
GAS_SETPOINTS_KPA = (100.0, 200.0, 300.0, 350.0)
# Nominal service pressure of water mains, MPa (the municipal minimum is 0.28 at the tap's level).
WATER_BASELINE_MPA = (0.28, 0.45)


def nominal(quantity: str, sensor_id: str) -> dict[str, float]:
    """A sensor's setpoint or baseline (canonical unit) where its quantity's default rule compares with one.

    Gas pressure deviates from the regulator's setpoint; water pressure drops from the main's nominal
    pressure (without one, alerts fall back to a same-hour baseline that needs days of history, so a new
    city would see no burst for days). Drawn from the sensor id, not the census's random stream: adding
    these kept every other figure of the census as it was. The simulator runs each sensor around them."""
    u = int.from_bytes(hashlib.blake2b(f"nominal:{sensor_id}".encode(), digest_size=8).digest(), "little") / 2**64
    if quantity == "gas.pressure":
        return {"setpoint": GAS_SETPOINTS_KPA[int(u * len(GAS_SETPOINTS_KPA))]}
    if quantity == "water.pressure":
        lo, hi = WATER_BASELINE_MPA
        return {"baseline": round(lo + (hi - lo) * u, 3)}
    return {}


def _monitored(c: Census) -> None:
    """The monitored facilities and their sensors (for Hefei: exactly the first sample's random stream)."""
    city, rng = c.city, c.rng
    corridors = city.corridors

    # Gas: pressure on medium-pressure mains, CH4 in adjacent underground spaces next to them.
    for road, n in city.gas_mains.items():
        for k, frac in enumerate(spread(n, rng), start=1):
            lat, lon = along(corridors[road], frac)
            seg = c.facility("11", "01", f"{road}中压燃气管段 K{k}", *offset(rng, lat, lon, 5, 25))
            seg.attributes = {"road": road, "corridor_frac": round(frac, 4)}
            in_mpa = rng.random() < 0.3
            c.sensor(
                "gas.pressure",
                seg,
                unit="MPa" if in_mpa else "kPa",
                range_=(0.0, 1.0) if in_mpa else None,
            )
            for j in range(2 if rng.random() < 0.75 else 1):
                kind = rng.choice(["燃气阀门井", "相邻污水检查井", "相邻通信井", "相邻雨水检查井"])
                space = c.facility("11", "02", f"{road}{kind} K{k}-{j + 1}", *offset(rng, seg.lat, seg.lon, 30, 220))
                space.attributes = {"space_type": kind.removeprefix("相邻"), "adjacent_to": seg.code}
                r = rng.random()
                unit = "%vol" if r < 0.12 else ("ppm" if r < 0.18 else "%LEL")
                c.sensor("gas.ch4", space, unit=unit)

    # Water supply: pressure along mains, DMA inlet meters, quality points, leak-noise loggers.
    segments: list[Facility] = []
    for road, n in city.water_mains.items():
        for k, frac in enumerate(spread(n, rng), start=1):
            lat, lon = along(corridors[road], frac)
            dn = rng.choice([600, 800, 1000, 1200])
            seg = c.facility("12", "01", f"{road}DN{dn}供水干管 第{k}段", lat, lon)
            seg.attributes = {"road": road, "corridor_frac": round(frac, 4), "diameter_mm": dn}
            segments.append(seg)
            c.sensor("water.pressure", seg, unit="kPa" if rng.random() < 0.15 else "MPa")
    dma_roads = list(city.water_mains)
    for i in range(city.dmas):
        road = dma_roads[i % len(dma_roads)]
        lat, lon = offset(rng, *along(corridors[road], rng.uniform(0.05, 0.95)), 100, 600)
        dma = c.facility("12", "02", f"DMA-{i + 1:02d} 入口计量（{road}）", lat, lon)
        c.sensor("water.flow", dma, unit="L/s" if rng.random() < 0.1 else "m³/h")
        if i < city.night_flow_meters:
            c.sensor("water.night_min_flow", dma)
    for i in range(city.quality_sites):
        road = rng.choice(dma_roads)
        site = c.facility(
            "12",
            "03",
            f"管网末梢水质监测点 {i + 1:02d}（{road}）",
            *offset(rng, *along(corridors[road], rng.random()), 200, 900),
        )
        for qty in ("water.turbidity", "water.chlorine", "water.ph"):
            c.sensor(qty, site, near_m=3)
    for seg in rng.sample(segments, city.leak_loggers):
        c.sensor("water.leak_noise", seg, near_m=60)

    # Drainage: ponding at low points and underpasses, manhole levels, rain gauges, river gauges.
    roads = list(corridors)
    for i in range(city.ponding):
        road = roads[i % len(roads)]
        cross = rng.choice([r for r in roads if r != road])
        spot = c.facility(
            "13",
            "01",
            f"{road}与{cross}交口积水点",
            *along(corridors[road], rng.uniform(0.05, 0.95)),
        )
        in_mm = rng.random() < 0.2
        c.sensor(
            "drainage.ponding",
            spot,
            near_m=5,
            unit="mm" if in_mm else "cm",
            range_=(0.0, 1000.0) if in_mm else (0.0, 100.0),
        )
    for i in range(city.wells):
        road = roads[(i * 3) % len(roads)]
        system = rng.choice(["雨水", "污水"])
        well = c.facility(
            "13",
            "02",
            f"{road}{system}检查井 W{i + 1:02d}",
            *offset(rng, *along(corridors[road], rng.random()), 5, 40),
        )
        well.attributes = {"system": system}
        c.sensor("drainage.pipe_level", well)
    for name, (lat, lon) in city.gauges:
        st = c.facility("13", "03", f"{name}雨量站", lat, lon)
        c.sensor("drainage.rain", st)
    river_name, river = city.river
    for k, frac in enumerate((0.15, 0.5, 0.85), start=1):
        st = c.facility("13", "04", f"{river_name}水位站 {k}", *along(river, frac))
        c.sensor("drainage.water_level", st, unit="cm" if k == 3 else "m")

    # Heating: heat-exchange stations.
    for i in range(city.heating_stations):
        road = city.heating_roads[i % len(city.heating_roads)]
        st = c.facility(
            "14",
            "01",
            f"{road}换热站 {i + 1:02d}",
            *offset(rng, *along(corridors[road], rng.random()), 80, 400),
        )
        c.sensor("heating.supply_temp", st, near_m=3)
        c.sensor("heating.supply_pressure", st, near_m=3, unit="kPa" if rng.random() < 0.3 else "MPa")

    # Bridges: 14 sensors each (the real projects use ~46; a sample keeps it small).
    layout = [
        ("bridge.deflection", 3),
        ("bridge.strain", 3),
        ("bridge.vibration", 2),
        ("bridge.displacement", 2),
        ("bridge.crack_width", 1),
        ("bridge.bearing_reaction", 2),
        ("bridge.modal_freq", 1),
    ]
    for name, (lat, lon) in city.bridges:
        br = c.facility("21", "01", name, lat, lon)
        for qty, n in layout:
            for _ in range(n):
                c.sensor(qty, br, near_m=150)

    # Road tunnels / underpasses.
    for name, (lat, lon) in city.tunnels:
        tn = c.facility("21", "02", name, lat, lon)
        for qty in ("tunnel.co", "tunnel.co", "tunnel.convergence", "tunnel.convergence"):
            c.sensor(qty, tn, near_m=250)

    # A utility tunnel (a city-level facility).
    ut_road, ut_name = city.utility_tunnel
    for k, frac in enumerate((0.55, 0.7, 0.85), start=1):
        sec = c.facility("15", "01", f"{ut_name} 第{k}舱段", *along(corridors[ut_road], frac), region=city.region)
        sec.attributes = {"road": ut_road, "corridor_frac": frac}
        for qty in ("utility_tunnel.o2", "utility_tunnel.h2s", "utility_tunnel.temperature", "utility_tunnel.ch4"):
            c.sensor(qty, sec, near_m=20)

    # Road collapse hazards: settlement on segments over metro works.
    for i in range(city.settlements):
        road = city.settlement_roads[i % len(city.settlement_roads)]
        seg = c.facility("21", "03", f"{road}路段 R{i + 1:02d}", *along(corridors[road], rng.random()))
        c.sensor("road.settlement", seg, near_m=20)

    # Smart manhole covers.
    for i in range(city.covers):
        minor = ("01", "02", "03")[i % 3]
        road = rng.choice(roads)
        cover = c.facility(
            "01",
            minor,
            f"{road}{CLASSES[('01', minor)][1]} {i + 1:02d}",
            *offset(rng, *along(corridors[road], rng.random()), 3, 30),
        )
        c.sensor("road.cover_tilt", cover)
        c.sensor("road.cover_open", cover)

    # Buildings in the housing-safety archive.
    for i in range(city.buildings):
        lat, lon = offset(rng, *city.old_housing, 300, 3500)
        b = c.facility("31", "01", f"老旧小区房屋 {i + 1:02d}号楼", lat, lon)
        c.sensor("building.tilt", b, near_m=10)
        if i < 4:
            c.sensor("building.crack_width", b, near_m=10)

    # A few sensors retired (replaced, kept for their history).
    for idx in rng.sample(range(len(c.sensors)), 3):
        c.sensors[idx] = c.sensors[idx].model_copy(update={"status": SensorStatus.RETIRED})


def _network(c: Census, rng: random.Random) -> None:
    """What the monitored facilities hang in: stations, valves, pipes, outfalls, and the links between."""
    city = c.city
    corridors = city.corridors

    # Gas: gate stations feed the first segment of each main; segments flow in order along their road;
    # a valve between two segments controls the downstream one; regulators take gas off a segment.
    stations = [c.facility("11", "03", name, *point) for name, point in city.gate_stations]
    for road in city.gas_mains:
        segs = [f for f in c.of_class("11", "01") if f.attributes.get("road") == road]
        c.link(c.nearest(segs[0].point, stations), segs[0], "feeds")
        for k, (up, down) in enumerate(itertools.pairwise(segs), start=1):
            c.link(up, down, "flow")
            mid = ((up.lat + down.lat) / 2, (up.lon + down.lon) / 2)
            valve = c.facility("11", "05", f"{road}燃气阀门 V{k}", *offset(rng, *mid, 5, 30))
            c.link(valve, down, "controls")
        for j, seg in enumerate(rng.sample(segs, min(2, len(segs))), start=1):
            reg = c.facility("11", "04", f"{road}调压箱 T{j}", *offset(rng, *seg.point, 60, 300))
            c.link(seg, reg, "feeds")

    # Water: plants' pumping stations feed the mains, mains flow in order, valves control segments,
    # DMA inlets and quality points are fed by their nearest main.
    plants = [c.facility("12", "04", name, *point) for name, point in city.water_plants]
    mains = c.of_class("12", "01")
    for road in city.water_mains:
        segs = [f for f in mains if f.attributes.get("road") == road]
        c.link(c.nearest(segs[0].point, plants), segs[0], "feeds")
        for k, (up, down) in enumerate(itertools.pairwise(segs), start=1):
            c.link(up, down, "flow")
            mid = ((up.lat + down.lat) / 2, (up.lon + down.lon) / 2)
            valve = c.facility("12", "05", f"{road}供水阀门 V{k}", *offset(rng, *mid, 5, 30))
            c.link(valve, down, "controls")
    for fac in c.of_class("12", "02") + c.of_class("12", "03"):
        c.link(c.nearest(fac.point, mains), fac, "feeds")

    # Drainage: a few trunk sewers run to outfalls on the river; wells sit on the nearest pipe and
    # ponding points drain into it.
    river_name, river = city.river
    pipes: list[Facility] = []
    for k, frac in enumerate((0.2, 0.45, 0.7, 0.9), start=1):
        out_pt = along(river, frac)
        outfall = c.facility("13", "06", f"{river_name}排口 {k:02d}", *offset(rng, *out_pt, 20, 60))
        inland = offset(rng, *out_pt, 1800, 2600)
        chain: list[Facility] = []
        for j in range(3):
            a = (inland[0] + (out_pt[0] - inland[0]) * j / 3, inland[1] + (out_pt[1] - inland[1]) * j / 3)
            b = (inland[0] + (out_pt[0] - inland[0]) * (j + 1) / 3, inland[1] + (out_pt[1] - inland[1]) * (j + 1) / 3)
            pipe = c.facility("13", "05", f"{river_name}排口 {k:02d} 截流干管 第{j + 1}段", *a)
            pipe.line = [a, b]
            chain.append(pipe)
        for up, down in itertools.pairwise(chain):
            c.link(up, down, "flow")
        c.link(chain[-1], outfall, "flow")
        pipes += chain
    for fac in c.of_class("13", "02") + c.of_class("13", "01"):
        c.link(fac, c.nearest(fac.point, pipes), "flow")

    # Heating: the heat source feeds a trunk, which feeds a branch pipe to each exchange station.
    source_name, source_pt = city.heat_source
    source = c.facility("14", "03", source_name, *source_pt)
    stations_h = c.of_class("14", "01")
    centre = (sum(s.lat for s in stations_h) / len(stations_h), sum(s.lon for s in stations_h) / len(stations_h))
    trunk: list[Facility] = []
    for j in range(3):
        a = (source_pt[0] + (centre[0] - source_pt[0]) * j / 3, source_pt[1] + (centre[1] - source_pt[1]) * j / 3)
        b = (
            source_pt[0] + (centre[0] - source_pt[0]) * (j + 1) / 3,
            source_pt[1] + (centre[1] - source_pt[1]) * (j + 1) / 3,
        )
        pipe = c.facility("14", "02", f"{source_name}供热主干管 第{j + 1}段", *a)
        pipe.line = [a, b]
        trunk.append(pipe)
    c.link(source, trunk[0], "feeds")
    for up, down in itertools.pairwise(trunk):
        c.link(up, down, "flow")
    for st in stations_h:
        tap = c.nearest(st.point, trunk)
        start = tap.line[-1] if tap.line else tap.point
        branch = c.facility("14", "02", f"{st.name}供热支管", *start)
        branch.line = [start, st.point]
        c.link(tap, branch, "flow")
        c.link(branch, st, "feeds")

    # Pipes and tunnel sections drawn along their road.
    for fac in c.facilities:
        road = fac.attributes.pop("road", None)
        frac = fac.attributes.pop("corridor_frac", None)
        if road is not None and frac is not None and fac.line is None:
            fac.line = _segment_line(corridors[road], frac, fac.point, rng.uniform(250, 450))


def _attributes(c: Census, seed: int) -> None:
    """Attributes that matter for risk, each facility's from its own random stream, and its unit."""
    city = c.city
    for fac in c.facilities:
        r = random.Random(f"{seed}:attr:{fac.code}")
        a: dict[str, Any] = {"facility_type": fac.class_name}
        key = (fac.major, fac.minor)
        if key == ("11", "01"):
            material = r.choices(["PE", "钢", "球墨铸铁", "灰口铸铁"], [5, 4, 2, 1])[0]
            a |= {
                "material": material,
                "diameter_mm": r.choice([160, 200, 250, 315, 400, 500]),
                "pressure_class": r.choice(["中压A", "中压A", "中压B", "次高压B"]),
                "build_year": r.randint(1988, 2021) if material != "灰口铸铁" else r.randint(1982, 1996),
                "depth_m": round(r.uniform(0.9, 2.2), 1),
            }
        elif key == ("11", "03"):
            a |= {"capacity_m3_h": r.choice([50_000, 80_000, 120_000]), "inlet": "次高压A", "outlet": "中压A"}
            a["build_year"] = r.randint(2000, 2016)
        elif key == ("11", "04"):
            a |= {"inlet": "中压A", "outlet": "低压", "capacity_m3_h": r.choice([300, 600, 1000, 2000])}
            a["build_year"] = r.randint(1998, 2022)
        elif key in (("11", "05"), ("12", "05")):
            a |= {"valve_type": r.choice(["球阀", "蝶阀", "闸阀"]), "diameter_mm": r.choice([200, 300, 400, 600])}
            a["build_year"] = r.randint(1995, 2022)
        elif key == ("12", "01"):
            material = r.choices(["球墨铸铁", "钢", "灰口铸铁", "PE"], [6, 3, 2, 1])[0]
            a |= {
                "material": material,
                "diameter_mm": fac.attributes.get("diameter_mm", r.choice([600, 800, 1000])),
                "pressure_class": "0.6 MPa",
                "build_year": r.randint(1978, 1995) if material == "灰口铸铁" else r.randint(1996, 2022),
            }
        elif key == ("12", "04"):
            a |= {"capacity_m3_d": r.choice([200_000, 300_000, 500_000]), "pumps": r.randint(4, 8)}
            a["build_year"] = r.randint(1985, 2015)
        elif key == ("12", "02"):
            a |= {"households": r.randint(3_000, 25_000), "inlet_diameter_mm": r.choice([200, 300, 400])}
        elif key == ("13", "02"):
            a |= {"depth_m": round(r.uniform(2.5, 6.5), 1), "material": r.choice(["砖砌", "钢筋混凝土"])}
        elif key == ("13", "05"):
            a |= {
                "material": r.choice(["钢筋混凝土", "HDPE", "球墨铸铁"]),
                "diameter_mm": r.choice([800, 1000, 1200, 1500]),
                "system": r.choice(["雨水", "截流合流"]),
                "build_year": r.randint(1990, 2020),
            }
        elif key == ("13", "06"):
            a |= {"receiving_water": city.river[0], "diameter_mm": r.choice([1000, 1200, 1500]), "flap_gate": True}
        elif key == ("13", "01"):
            a |= {"low_point": r.choice(["下穿通道", "低洼路段", "立交桥下"]), "catchment_ha": r.randint(5, 60)}
        elif key == ("13", "04"):
            a |= {"warning_level_m": round(r.uniform(7.5, 9.5), 1), "river": city.river[0]}
        elif key == ("14", "01"):
            a |= {"heated_area_10k_m2": r.randint(8, 40), "build_year": r.randint(2005, 2020)}
        elif key == ("14", "02"):
            a |= {"material": "钢", "diameter_mm": r.choice([300, 500, 700]), "medium": "热水"}
            a |= {"design_temp_c": 130, "design_pressure_mpa": 1.6, "build_year": r.randint(2005, 2019)}
        elif key == ("14", "03"):
            a |= {"capacity_mw": r.choice([350, 700]), "build_year": r.randint(1995, 2010)}
        elif key == ("15", "01"):
            a |= {"compartments": ["综合舱", "电力舱", "燃气舱"], "length_m": r.randint(800, 1600)}
            a["build_year"] = r.randint(2016, 2021)
        elif key == ("21", "01"):
            design = dict(city.bridge_design.get(fac.name, {}))
            structure = design.pop("structure", r.choice(["预应力混凝土连续梁桥", "钢箱梁桥"]))
            span = design.pop("main_span_m", r.choice([30, 35, 40, 50]))
            a |= {
                "structure": structure,
                "main_span_m": span,
                "length_m": design.pop("length_m", r.randint(800, 4500)),
                "build_year": design.pop("year", r.randint(2005, 2014)),
                "design_load": "城-A级",
                # Deflection limit of the main span: L/600 for girders, L/400 for cable-stayed (DEFAULT).
                "design_deflection_limit_mm": round(span * 1000 / (400 if "斜拉" in structure else 600), 1),
                "design_crack_width_limit_mm": 0.2,
            }
        elif key == ("21", "02"):
            a |= {"length_m": r.randint(400, 3000), "lanes": r.choice([4, 6]), "build_year": r.randint(2008, 2023)}
        elif key == ("21", "03"):
            a |= {"above_metro_works": True, "length_m": r.randint(300, 900)}
        elif key == ("31", "01"):
            a |= {"structure": "砖混", "floors": r.randint(4, 7), "build_year": r.randint(1978, 1995)}
        elif fac.major == "01":
            a |= {"material": r.choice(["球墨铸铁", "复合材料"]), "diameter_mm": 700}
        fac.attributes = {k: v for k, v in a.items() if k not in ("road", "corridor_frac")}
        domain = fac.kind if fac.kind not in ("tunnel", "road") else "bridge"
        fac.unit_id = city.units[domain][0]


_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ["建国", "海燕", "志强", "晓东", "丽华", "文军", "静", "伟", "明", "秀英", "国庆", "红梅"]
_UNIT_DOMAINS = {"bridge": ["bridge", "tunnel", "road"]}


def _units(c: Census, seed: int) -> None:
    city = c.city
    r = random.Random(f"{seed}:units")
    for n, (domain, (unit_id, name)) in enumerate(city.units.items(), start=1):
        person = r.choice(_SURNAMES) + r.choice(_GIVEN)
        c.units.append(
            {
                "id": unit_id,
                "name": name,
                "region": city.region,
                "domains": _UNIT_DOMAINS.get(domain, [domain]),
                # Invented numbers: the sample must not send anyone to a real phone. Every contact field is
                # written out: assets' import takes a contact's omitted field as a change to the stored "".
                "contacts": [
                    {
                        "name": "调度值班室",
                        "role": "24 小时值班",
                        "phone": f"{city.phone_prefix}{n:02d}00000",
                        "email": "",
                    },
                    {
                        "name": person,
                        "role": "安全负责人",
                        "phone": f"{city.phone_prefix}{n:02d}{r.randint(10000, 99999)}",
                        "email": f"safety@{unit_id.lower()}.example.cn",
                    },
                ],
            }
        )


def _risks(c: Census, seed: int) -> None:
    """The risk-source register (风险源清单): what could go wrong where, its grade, controls and rectification."""
    r = random.Random(f"{seed}:risks")
    city = c.city
    unit_names = {uid: name for uid, name in city.units.values()}

    def add(hazard: str, name: str, grade: str, facilities: list[Facility], controls: list[str]) -> None:
        at = facilities[0]
        status = r.choices(["pending", "in_progress", "done"], [3, 4, 2])[0]
        c.risks.append(
            {
                "id": f"RS-{city.region}-{len(c.risks) + 1:03d}",
                "name": name,
                "hazard": hazard,
                "grade": grade,
                "region": at.region,
                "geometry": {"type": "Point", "coordinates": [at.lon, at.lat]},
                "facility_codes": [f.code for f in facilities],
                "controls": controls,
                "rectification": {
                    "status": status,
                    "owner": unit_names[at.unit_id or ""],
                    "deadline_ms": _EPOCH_2026 + r.randint(30, 540) * _DAY_MS,
                },
            }
        )

    schools = ["实验小学", "第一中学", "师范附小", "第四十五中学", "育才小学"]
    for fac in c.of_class("11", "03") + c.of_class("11", "04")[:2]:
        add(
            "gas_leak",
            f"{fac.name}邻近{r.choice(schools)}（人员密集场所）",
            "II",
            [fac],
            ["可燃气体在线监测", "每日巡检", "应急切断阀", "学校周边 50 m 禁止动火作业"],
        )
    for fac in [f for f in c.of_class("12", "01") if f.attributes.get("material") == "灰口铸铁"][:3]:
        add(
            "pipe_burst",
            f"{fac.name}（{fac.attributes['build_year']} 年灰口铸铁管，老化）",
            "III",
            [fac],
            ["压力在线监测", "听漏巡检", "列入老旧管网改造计划"],
        )
    old_gas = [f for f in c.of_class("11", "01") if f.attributes.get("material") in ("灰口铸铁", "钢")]
    for fac in [f for f in old_gas if f.attributes["build_year"] < 2005][:3]:
        add(
            "gas_leak",
            f"{fac.name}（{fac.attributes['material']}管，{fac.attributes['build_year']} 年敷设，腐蚀风险）",
            "II" if fac.attributes["material"] == "灰口铸铁" else "III",
            [fac],
            ["相邻地下空间甲烷监测", "阴极保护检测", "每季度泄漏检测"],
        )
    for fac in c.of_class("21", "01")[:2]:
        add(
            "structural_damage",
            f"{fac.name}主梁裂缝",
            "III",
            [fac],
            ["裂缝宽度在线监测", "限载通行", "季度专项检测"],
        )
    for fac in [f for f in c.of_class("13", "01") if f.attributes.get("low_point") == "下穿通道"][:2]:
        add("waterlogging", f"{fac.name}（下穿通道易涝）", "III", [fac], ["积水深度监测", "强排泵站", "封闭交通预案"])
    for fac in c.of_class("21", "03")[:2]:
        add(
            "road_collapse",
            f"{fac.name}地铁施工沉降",
            "II",
            [fac],
            ["地表沉降监测", "探地雷达月度普查", "施工方联防"],
        )
    olds = c.of_class("31", "01")
    add("building_damage", "老旧小区砖混住宅倾斜", "III", olds[:2], ["倾斜与裂缝监测", "房屋安全鉴定", "住户告知"])
    sections = c.of_class("15", "01")
    add("gas_leak", f"{city.utility_tunnel[1]}燃气舱", "IV", sections[:1], ["甲烷监测联动通风", "舱室巡检机器人"])


def generate(region: str, seed: int | None = None) -> Census:
    """One city's census, deterministic for ``seed`` (default: the region code)."""
    city = CITIES[region]
    seed = int(region) if seed is None else seed
    c = Census(city, random.Random(seed))
    _monitored(c)
    _network(c, random.Random(f"{seed}:network"))
    _units(c, seed)
    _attributes(c, seed)
    _risks(c, seed)
    return c


# ───────────────────────────────────────── files ─────────────────────────────────────────


def _feature_collection(features: list[dict[str, Any]]) -> str:
    """GeoJSON with one feature a line: small diffs when the census changes, easy to grep."""
    lines = ",\n".join(json.dumps(f, ensure_ascii=False) for f in features)
    return f'{{"type": "FeatureCollection", "features": [\n{lines}\n]}}\n'


def _feature(key: str, geometry: dict[str, Any] | None, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "id": key, "geometry": geometry, "properties": properties}


def render(c: Census) -> dict[str, str]:
    """The census as file texts, by file name: each one a file the assets bulk import takes as it is."""
    r = c.region
    facilities = [
        _feature(
            f.code,
            f.geometry(),
            {
                "code": f.code,
                "kind": f.kind,
                "name": f.name,
                "attributes": f.attributes,
                "unit_id": f.unit_id,
                "status": f.status,
            },
        )
        for f in c.facilities
    ]
    risks = [_feature(x["id"], x["geometry"], {k: v for k, v in x.items() if k != "geometry"}) for x in c.risks]
    # Units have no place: GeoJSON's unlocated features (geometry null) keep their contacts structured.
    units = [_feature(u["id"], None, u) for u in c.units]
    links = io.StringIO()
    w = csv.DictWriter(links, fieldnames=["id", "from_code", "to_code", "kind"], lineterminator="\n")
    w.writeheader()
    w.writerows(c.links)
    return {
        f"units-{r}.geojson": _feature_collection(units),
        f"facilities-{r}.geojson": _feature_collection(facilities),
        f"sensors-{r}.csv": sensors_csv(c.sensors),
        f"links-{r}.csv": links.getvalue(),
        f"risks-{r}.geojson": _feature_collection(risks),
    }


def census_files(directory: Path, region: str) -> dict[str, Path]:
    """Paths of a city's census files in ``directory``, by entity, in dependency order."""
    return {e: directory / f"{e}-{region}.{_EXT[e]}" for e in ENTITIES}


def packaged_dir() -> Path:
    """The packaged census (the demo's, and the simulator's sensors)."""
    return Path(str(resources.files("lifeline.launcher").joinpath("data")))


def _sensor_body(s: SensorSpec) -> dict[str, Any]:
    """A census sensor as the assets API shapes it (the create request's fields, without status)."""
    body = {
        "sensor_id": s.sensor_id,
        "facility_code": s.facility_code,
        "quantity": s.quantity,
        "unit": s.unit,
        "interval_s": s.interval_s,
        "position": {"lon": s.lon, "lat": s.lat},
        "range_min": s.range_min,
        "range_max": s.range_max,
        "setpoint": s.setpoint,
        "baseline": s.baseline,
    }
    return {k: v for k, v in body.items() if v is not None}


def _features(path: Path) -> list[dict[str, Any]]:
    """A FeatureCollection's features as API-shaped bodies (properties, and the geometry where there is one)."""
    features = json.loads(path.read_text(encoding="utf-8"))["features"]
    return [{**f["properties"], **({"geometry": f["geometry"]} if f["geometry"] else {})} for f in features]


def read_census(directory: Path, region: str) -> dict[str, list[dict[str, Any]]]:
    """A city's census files as API-shaped bodies by entity (units, facilities, sensors, links, risks)."""
    paths = census_files(directory, region)
    sensors = [
        {**_sensor_body(s), "status": str(s.status)} for s in load_sensors(paths["sensors"], catalogue()).values()
    ]
    with paths["links"].open(encoding="utf-8", newline="") as fh:
        links = list(csv.DictReader(fh))
    return {
        "units": _features(paths["units"]),
        "facilities": _features(paths["facilities"]),
        "sensors": sensors,
        "links": links,
        "risks": _features(paths["risks"]),
    }


# ───────────────────────────────────────── loading ─────────────────────────────────────────

# Census entity → the assets bulk import's entity; census_files lists them in dependency order.
_IMPORT = {"units": "unit", "facilities": "facility", "sensors": "sensor", "links": "link", "risks": "risk"}
_MEDIA = {".geojson": "application/geo+json", ".csv": "text/csv"}
_REASON = "样例普查数据 sample census"


@dataclass
class LoadStats:
    """What a load did per entity, as the imports answered, and how many sensors it retired."""

    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)
    retired: int = 0

    def summary(self) -> str:
        counts = ", ".join(f"{e} {self.created[e]}/{self.updated[e]}/{self.unchanged[e]}" for e in self.created)
        retired = f"; 停用 retired {self.retired}" if self.retired else ""
        return f"新增/更新/未变 created/updated/unchanged: {counts}{retired}"


class CensusLoadError(RuntimeError):
    """The assets service refused part of the census."""


def _refused(what: str, resp: httpx.Response) -> CensusLoadError:
    return CensusLoadError(f"{what}: HTTP {resp.status_code} {resp.text[:1000]}")


async def _retire_sensors(
    http: httpx.AsyncClient, headers: Callable[[], Awaitable[dict[str, str]]], path: Path
) -> tuple[int, int]:
    """Register and retire the census's retired sensors that assets does not hold retired yet.

    An import neither creates a retired entity nor retires one, but it takes a retired one unchanged:
    after this the sensors file imports as it is. Returns (created, retired) by this call."""
    created = retired = 0
    for s in load_sensors(path, catalogue()).values():
        if s.status is not SensorStatus.RETIRED:
            continue
        at = f"/v1/sensors/{s.sensor_id}"
        resp = await http.get(at, headers=await headers())
        if resp.status_code == 404:
            resp = await http.post("/v1/sensors", json={**_sensor_body(s), "reason": _REASON}, headers=await headers())
            created += 1
        elif resp.is_success and resp.json()["status"] == "retired":
            continue
        if not resp.is_success:
            raise _refused(f"{s.sensor_id} ({path.name})", resp)
        resp = await http.post(f"{at}/retire", json={"reason": _REASON}, headers=await headers())
        if not resp.is_success:
            raise _refused(f"retiring {s.sensor_id}", resp)
        retired += 1
    return created, retired


async def load_census(
    base_url: str,
    authorization: Callable[[], Awaitable[str]],
    directory: Path,
    region: str,
    *,
    client: httpx.AsyncClient | None = None,
) -> LoadStats:
    """Import a city's census files (see :func:`census_files`) into assets, one bulk import per entity.

    Units, facilities, sensors, links, risk sources in that order (each names only what came before). Each
    import is all-or-nothing and idempotent by key, so a second load changes nothing. Raises
    :class:`CensusLoadError` when assets refuses a file (its problem details name the bad records).
    """
    import httpx

    async def headers() -> dict[str, str]:
        return {"Authorization": await authorization()}

    stats = LoadStats()
    own = client is None
    http = client or httpx.AsyncClient(base_url=base_url, timeout=120)
    try:
        for entity, path in census_files(directory, region).items():
            created = retired = 0
            if entity == "sensors":
                created, retired = await _retire_sensors(http, headers, path)
            resp = await http.post(
                f"/v1/import/{_IMPORT[entity]}",
                params={"name": path.name},
                content=path.read_bytes(),
                headers={**await headers(), "Content-Type": _MEDIA[path.suffix]},
            )
            if not resp.is_success:
                raise _refused(f"importing {path.name}", resp)
            body = resp.json()
            # The import counts what was registered or retired just before it as unchanged: it was this load's.
            stats.created[entity] = body["created"] + created
            stats.updated[entity] = body["updated"] + retired - created
            stats.unchanged[entity] = body["unchanged"] - retired
            stats.retired += retired
    finally:
        if own:
            await http.aclose()
    return stats


# ───────────────────────────────────────── command line ─────────────────────────────────────────


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``lifeline census`` (also ``python -m lifeline.launcher.census``)."""
    p = parser or argparse.ArgumentParser(prog="lifeline census", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="directory to write to (default: the packaged census)")
    p.add_argument("--region", choices=[*CITIES, "all"], default="all", help="which city (default: all)")
    p.add_argument("--seed", type=int, help="random seed (default: each city's region code)")
    p.add_argument("--check", action="store_true", help="fail if the files in --out differ from the generator's")
    return p


def run(args: argparse.Namespace) -> int:
    """Write (or ``--check``) the census files."""
    out: Path = args.out or packaged_dir()
    regions = list(CITIES) if args.region == "all" else [args.region]
    stale: list[Path] = []
    for region in regions:
        census = generate(region, args.seed)
        for name, text in render(census).items():
            path = out / name
            if args.check:
                if not path.exists() or path.read_text(encoding="utf-8") != text:
                    stale.append(path)
                continue
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if not args.check:
            print(
                f"{CITIES[region].name} {region}: {len(census.facilities)} facilities, {len(census.sensors)} sensors,"
                f" {len(census.links)} links, {len(census.risks)} risk sources, {len(census.units)} units → {out}"
            )
    for path in stale:
        print(f"stale: {path} (run `lifeline census`)", file=sys.stderr)
    return 1 if stale else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lifeline.launcher.census``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
