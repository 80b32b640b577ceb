"""Generate the sample sensor census of Hefei (合肥, 340100) used by the demo and the tests.

    uv run python tools/make_sample_sensors.py            # rewrite the committed files
    uv run python tools/make_sample_sensors.py --check    # fail if they are not current

Writes ``launcher/src/lifeline/launcher/data/sensors-340100.csv`` (the ingest sensor registry) and
``facilities-340100.csv`` (the facilities those sensors watch). The census is SYNTHETIC: plausible positions
along real corridors of Hefei (coordinates approximate, CGCS2000 ≈ WGS84), invented facilities and serials.
Deterministic for a given seed.

Facility codes are 16 digits: 6 region (GB/T 2260 district) + 2 major class + 2 minor class + 6 serial.
Only the shape and the water-manhole-cover class 01/01 come from the domain reference; the other class
numbers below are a DEFAULT convention of this sample, not a published table.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lifeline.kit.catalogue import SensorSpec, SensorStatus, load_quantities, sensors_csv

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "launcher" / "src" / "lifeline" / "launcher" / "data"
CITY = "340100"
SEED = 340100

DISTRICTS = {"340102": "瑶海区", "340103": "庐阳区", "340104": "蜀山区", "340111": "包河区"}

# DEFAULT class convention of this sample: (major, minor) -> name.
CLASSES: dict[tuple[str, str], str] = {
    ("01", "01"): "上水井盖",  # water manhole cover (the reference's example 3205080101000001)
    ("01", "02"): "污水井盖",
    ("01", "03"): "雨水井盖",
    ("11", "01"): "燃气管段",
    ("11", "02"): "燃气相邻地下空间",
    ("12", "01"): "供水管段",
    ("12", "02"): "供水计量分区(DMA)入口",
    ("12", "03"): "水质监测点",
    ("13", "01"): "易涝积水点",
    ("13", "02"): "排水检查井",
    ("13", "03"): "雨量站",
    ("13", "04"): "河道水位站",
    ("14", "01"): "供热换热站",
    ("15", "01"): "综合管廊舱段",
    ("21", "01"): "桥梁",
    ("21", "02"): "隧道",
    ("21", "03"): "道路",
    ("31", "01"): "房屋",
}

# Approximate centre lines of main roads (lat, lon), west→east or north→south.
CORRIDORS: dict[str, list[tuple[float, float]]] = {
    "长江路": [
        (31.853, 117.150),
        (31.861, 117.230),
        (31.864, 117.290),
        (31.870, 117.340),
    ],
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
NANFEI_RIVER = [(31.905, 117.225), (31.872, 117.290), (31.830, 117.350)]


def district_of(lat: float, lon: float) -> str:
    """Rough district of a point in central Hefei (good enough for a synthetic sample)."""
    if lon < 117.235 or (lat < 31.84 and lon < 117.265):
        return "340104"  # 蜀山 (west and south-west)
    if lat >= 31.855 and lon < 117.300:
        return "340103"  # 庐阳 (north-centre)
    if lat >= 31.840:
        return "340102"  # 瑶海 (east)
    return "340111"  # 包河 (south-east)


def along(line: list[tuple[float, float]], frac: float) -> tuple[float, float]:
    """Point at fraction ``frac`` of a polyline's length."""
    segs = [math.hypot(b[0] - a[0], (b[1] - a[1]) * math.cos(math.radians(a[0]))) for a, b in itertools.pairwise(line)]
    target = max(0.0, min(1.0, frac)) * sum(segs)
    for (a, b), length in zip(itertools.pairwise(line), segs, strict=True):
        if target <= length or length == 0:
            k = target / length if length else 0.0
            return (a[0] + (b[0] - a[0]) * k, a[1] + (b[1] - a[1]) * k)
        target -= length
    return line[-1]


def offset(rng: random.Random, lat: float, lon: float, lo_m: float, hi_m: float) -> tuple[float, float]:
    """A point between lo_m and hi_m metres away in a random direction."""
    r = rng.uniform(lo_m, hi_m)
    a = rng.uniform(0, 2 * math.pi)
    dlat = r * math.cos(a) / 111_320.0
    dlon = r * math.sin(a) / (111_320.0 * math.cos(math.radians(lat)))
    return (lat + dlat, lon + dlon)


@dataclass
class Facility:
    code: str
    region: str
    major: str
    minor: str
    name: str
    lat: float
    lon: float


@dataclass
class Census:
    rng: random.Random
    facilities: list[Facility] = field(default_factory=list)
    sensors: list[SensorSpec] = field(default_factory=list)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    _serial: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    def facility(
        self, major: str, minor: str, name: str, lat: float, lon: float, region: str | None = None
    ) -> Facility:
        region = region or district_of(lat, lon)
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
        note: str = "",
    ) -> SensorSpec:
        q = CATALOGUE.get(quantity)
        domain, name = quantity.split(".", 1)
        prefix = f"HF-{DOMAIN_ABBR[domain]}-{name.upper()}"
        self._count[prefix] = self._count.get(prefix, 0) + 1
        lat, lon = (fac.lat, fac.lon) if near_m <= 0 else offset(self.rng, fac.lat, fac.lon, 2.0, near_m)
        spec = SensorSpec(
            sensor_id=f"{prefix}-{self._count[prefix]:03d}",
            quantity=quantity,
            unit=unit or q.unit,
            region=fac.region,
            facility_code=fac.code,
            interval_s=q.interval_s,
            lat=round(lat, 6),
            lon=round(lon, 6),
            range_min=range_[0] if range_ else None,
            range_max=range_[1] if range_ else None,
        )
        self.sensors.append(spec)
        self.notes[spec.sensor_id] = {"note": note or fac.name}
        return spec


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
CATALOGUE = load_quantities()


def spread(n: int, rng: random.Random, margin: float = 0.06) -> list[float]:
    """n roughly even fractions along a line, with a little jitter."""
    step = (1 - 2 * margin) / max(1, n - 1) if n > 1 else 0.0
    return [min(1.0, max(0.0, margin + i * step + rng.uniform(-0.2, 0.2) * step)) for i in range(n)]


def build(seed: int = SEED) -> Census:
    """The whole census, deterministic for ``seed``."""
    rng = random.Random(seed)
    c = Census(rng)

    # Gas: pressure on medium-pressure mains, CH4 in adjacent underground spaces next to them.
    gas_mains = {
        "长江路": 6,
        "金寨路": 5,
        "望江路": 4,
        "临泉路": 3,
        "徽州大道": 3,
    }
    for road, n in gas_mains.items():
        for k, frac in enumerate(spread(n, rng), start=1):
            lat, lon = along(CORRIDORS[road], frac)
            seg = c.facility("11", "01", f"{road}中压燃气管段 K{k}", *offset(rng, lat, lon, 5, 25))
            in_mpa = rng.random() < 0.3
            c.sensor(
                "gas.pressure",
                seg,
                unit="MPa" if in_mpa else "kPa",
                range_=(0.0, 1.0) if in_mpa else None,
                note=f"{seg.name} 压力",
            )
            for j in range(2 if rng.random() < 0.75 else 1):
                kind = rng.choice(["燃气阀门井", "相邻污水检查井", "相邻通信井", "相邻雨水检查井"])
                space = c.facility("11", "02", f"{road}{kind} K{k}-{j + 1}", *offset(rng, seg.lat, seg.lon, 30, 220))
                r = rng.random()
                unit = "%vol" if r < 0.12 else ("ppm" if r < 0.18 else "%LEL")
                c.sensor("gas.ch4", space, unit=unit)

    # Water supply: pressure along mains, DMA inlet meters, quality points, leak-noise loggers.
    water_mains = {
        "金寨路": 6,
        "长江路": 5,
        "徽州大道": 4,
        "马鞍山路": 4,
        "潜山路": 4,
        "繁华大道": 3,
    }
    segments: list[Facility] = []
    for road, n in water_mains.items():
        for k, frac in enumerate(spread(n, rng), start=1):
            lat, lon = along(CORRIDORS[road], frac)
            seg = c.facility("12", "01", f"{road}DN{rng.choice([600, 800, 1000, 1200])}供水干管 第{k}段", lat, lon)
            segments.append(seg)
            c.sensor("water.pressure", seg, unit="kPa" if rng.random() < 0.15 else "MPa", note=f"{seg.name} 压力")
    dma_roads = list(water_mains)
    for i in range(14):
        road = dma_roads[i % len(dma_roads)]
        lat, lon = offset(rng, *along(CORRIDORS[road], rng.uniform(0.05, 0.95)), 100, 600)
        dma = c.facility("12", "02", f"DMA-{i + 1:02d} 入口计量（{road}）", lat, lon)
        c.sensor("water.flow", dma, unit="L/s" if rng.random() < 0.1 else "m³/h")
        if i < 8:
            c.sensor("water.night_min_flow", dma)
    for i in range(6):
        road = rng.choice(dma_roads)
        site = c.facility(
            "12",
            "03",
            f"管网末梢水质监测点 {i + 1:02d}（{road}）",
            *offset(rng, *along(CORRIDORS[road], rng.random()), 200, 900),
        )
        for qty in ("water.turbidity", "water.chlorine", "water.ph"):
            c.sensor(qty, site, near_m=3)
    for seg in rng.sample(segments, 8):
        c.sensor("water.leak_noise", seg, near_m=60, note=f"{seg.name} 听漏仪")

    # Drainage: ponding at low points and underpasses, manhole levels, rain gauges, river gauges.
    roads = list(CORRIDORS)
    for i in range(15):
        road = roads[i % len(roads)]
        cross = rng.choice([r for r in roads if r != road])
        spot = c.facility(
            "13",
            "01",
            f"{road}与{cross}交口积水点",
            *along(CORRIDORS[road], rng.uniform(0.05, 0.95)),
        )
        in_mm = rng.random() < 0.2
        c.sensor(
            "drainage.ponding",
            spot,
            near_m=5,
            unit="mm" if in_mm else "cm",
            range_=(0.0, 1000.0) if in_mm else (0.0, 100.0),
        )
    for i in range(20):
        road = roads[(i * 3) % len(roads)]
        well = c.facility(
            "13",
            "02",
            f"{road}{rng.choice(['雨水', '污水'])}检查井 W{i + 1:02d}",
            *offset(rng, *along(CORRIDORS[road], rng.random()), 5, 40),
        )
        c.sensor("drainage.pipe_level", well)
    gauges = [
        ("瑶海区", (31.870, 117.320)),
        ("庐阳区", (31.880, 117.265)),
        ("蜀山区", (31.850, 117.190)),
        ("包河区", (31.790, 117.300)),
        ("政务区", (31.818, 117.225)),
        ("滨湖新区", (31.745, 117.290)),
    ]
    for name, (lat, lon) in gauges:
        st = c.facility("13", "03", f"{name}雨量站", lat, lon)
        c.sensor("drainage.rain", st)
    for k, frac in enumerate((0.15, 0.5, 0.85), start=1):
        st = c.facility("13", "04", f"南淝河水位站 {k}", *along(NANFEI_RIVER, frac))
        c.sensor("drainage.water_level", st, unit="cm" if k == 3 else "m")

    # Heating: heat-exchange stations in the north of the city.
    for i in range(8):
        road = ["蒙城路", "临泉路", "长江路", "潜山路"][i % 4]
        st = c.facility(
            "14",
            "01",
            f"{road}换热站 {i + 1:02d}",
            *offset(rng, *along(CORRIDORS[road], rng.random()), 80, 400),
        )
        c.sensor("heating.supply_temp", st, near_m=3)
        c.sensor("heating.supply_pressure", st, near_m=3, unit="kPa" if rng.random() < 0.3 else "MPa")

    # Bridges: 14 sensors each (the real projects use ~46; a sample keeps it small).
    bridges = [
        ("金寨路高架桥", along(CORRIDORS["金寨路"], 0.55)),
        ("长江东路南淝河大桥", (31.8655, 117.3035)),
        ("徽州大道高架桥", along(CORRIDORS["徽州大道"], 0.5)),
    ]
    layout = [
        ("bridge.deflection", 3),
        ("bridge.strain", 3),
        ("bridge.vibration", 2),
        ("bridge.displacement", 2),
        ("bridge.crack_width", 1),
        ("bridge.bearing_reaction", 2),
        ("bridge.modal_freq", 1),
    ]
    for name, (lat, lon) in bridges:
        br = c.facility("21", "01", name, lat, lon)
        for qty, n in layout:
            for j in range(n):
                c.sensor(qty, br, near_m=150, note=f"{name} {CATALOGUE.get(qty).name('zh-CN')} #{j + 1}")

    # Road tunnels / underpasses.
    for name, (lat, lon) in (
        ("黄山路下穿隧道", along(CORRIDORS["黄山路"], 0.7)),
        ("繁华大道隧道", along(CORRIDORS["繁华大道"], 0.35)),
    ):
        tn = c.facility("21", "02", name, lat, lon)
        for qty in ("tunnel.co", "tunnel.co", "tunnel.convergence", "tunnel.convergence"):
            c.sensor(qty, tn, near_m=250)

    # Utility tunnel under Fanhua Avenue (a city-level facility).
    for k, frac in enumerate((0.55, 0.7, 0.85), start=1):
        sec = c.facility("15", "01", f"繁华大道综合管廊 第{k}舱段", *along(CORRIDORS["繁华大道"], frac), region=CITY)
        for qty in (
            "utility_tunnel.o2",
            "utility_tunnel.h2s",
            "utility_tunnel.temperature",
            "utility_tunnel.ch4",
        ):
            c.sensor(qty, sec, near_m=20)

    # Road collapse hazards: settlement on segments over metro works.
    for i in range(8):
        road = ["金寨路", "繁华大道", "长江路", "包河大道"][i % 4]
        seg = c.facility("21", "03", f"{road}路段 R{i + 1:02d}", *along(CORRIDORS[road], rng.random()))
        c.sensor("road.settlement", seg, near_m=20)

    # Smart manhole covers.
    for i in range(10):
        minor = ("01", "02", "03")[i % 3]
        road = rng.choice(roads)
        cover = c.facility(
            "01",
            minor,
            f"{road}{CLASSES[('01', minor)]} {i + 1:02d}",
            *offset(rng, *along(CORRIDORS[road], rng.random()), 3, 30),
        )
        c.sensor("road.cover_tilt", cover)
        c.sensor("road.cover_open", cover)

    # Buildings in the housing-safety archive.
    for i in range(6):
        lat, lon = offset(rng, 31.855, 117.28, 300, 3500)
        b = c.facility("31", "01", f"老旧小区房屋 {i + 1:02d}号楼", lat, lon)
        c.sensor("building.tilt", b, near_m=10)
        if i < 4:
            c.sensor("building.crack_width", b, near_m=10)

    # A few sensors retired (replaced, kept for their history).
    for idx in rng.sample(range(len(c.sensors)), 3):
        c.sensors[idx] = c.sensors[idx].model_copy(update={"status": SensorStatus.RETIRED})
    return c


def render(c: Census) -> tuple[str, str]:
    """The sensor registry and the facility list as CSV text."""
    fac = io.StringIO()
    w = csv.writer(fac, lineterminator="\n")
    w.writerow(["facility_code", "region", "major", "minor", "class_zh", "name_zh", "lat", "lon"])
    for f in c.facilities:
        w.writerow([f.code, f.region, f.major, f.minor, CLASSES[(f.major, f.minor)], f.name, f.lat, f.lon])
    return sensors_csv(c.sensors, extra=c.notes), fac.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args(argv)
    census = build(args.seed)
    sensors_text, facilities_text = render(census)
    targets = {
        args.out / f"sensors-{CITY}.csv": sensors_text,
        args.out / f"facilities-{CITY}.csv": facilities_text,
    }
    if args.check:
        stale = [p for p, text in targets.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in stale:
            print(f"stale: {p} (run tools/make_sample_sensors.py)", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for p, text in targets.items():
        p.write_text(text, encoding="utf-8")
    by_domain: dict[str, int] = {}
    for s in census.sensors:
        by_domain[s.quantity.split(".")[0]] = by_domain.get(s.quantity.split(".")[0], 0) + 1
    print(f"{len(census.sensors)} sensors, {len(census.facilities)} facilities: {by_domain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
