"""Assets: bulk import rate and radius-query latency, each next to the raw database figure it is compared with.

``python -m bench.assets [--quick] [--backend sqlite|postgres|all] [--keep]`` runs it; ``python -m
bench.assets serve`` is its server child (the assets service built from the environment, printing
``READY <http url>``, stopping cleanly on SIGTERM).

Per database backend (SQLite always, PostgreSQL when reachable):

1. Limit: the rows one imported facility costs (its current state, its history row, its outbox event)
   inserted raw into the assets schema in one transaction: SQLite ``executemany`` with the sqlite3 module,
   PostgreSQL ``COPY`` with asyncpg. Counted in facilities/s.
2. Import: a GeoJSON FeatureCollection of N facilities (full: 100,000) streamed from a file to
   ``POST /v1/import/facility`` of the service in a child process; facilities/s = N / the request's time
   (everything validated and committed). The server's peak RSS shows the file is not held in memory.
3. Radius queries over those N facilities: ``GET /v1/spatial/features?near=…&radius_m=500`` from random
   centres in the city, one at a time; p50/p99 latency next to the p99 of the circle's bounding box asked
   straight of the spatial index (SQLite R*Tree, PostGIS GiST), the candidates the endpoint refines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    MB,
    BenchError,
    BenchIdp,
    Row,
    RssSampler,
    asyncpg_to_sqlalchemy,
    fresh_pg_database,
    log,
    pg_admin_dsn,
    pg_reachable,
    print_and_clean,
    run_service_bench,
    service_bench_main,
    start_serve_child,
    stop_process,
)

REGION = "340100"
COUNTIES = ("340102", "340103", "340104", "340111")
# Hefei's built-up area: where the generated facilities and the query centres lie.
LON = (117.10, 117.40)
LAT = (31.70, 31.95)
RADIUS_M = 500.0
GOAL_IMPORT = 5_000.0  # facilities/s: a 100k census in well under a minute
GOAL_P99_MS = 100.0


@dataclass(frozen=True)
class Plan:
    facilities: int
    queries: int


FULL = Plan(facilities=100_000, queries=300)
QUICK = Plan(facilities=10_000, queries=100)


def facility_code(i: int) -> str:
    return f"{COUNTIES[i % len(COUNTIES)]}1102{i:06d}"


def position(i: int) -> tuple[float, float]:
    rnd = random.Random(i)
    return round(rnd.uniform(*LON), 6), round(rnd.uniform(*LAT), 6)


def feature(i: int) -> dict[str, Any]:
    lon, lat = position(i)
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {
            "code": facility_code(i),
            "kind": "gas",
            "name": f"燃气阀门 {i:06d}",
            "attributes": {"material": "PE", "diameter_mm": 200},
        },
    }


def write_geojson(path: Path, n: int) -> int:
    """A FeatureCollection of n facilities, written feature by feature; its size in bytes."""
    with path.open("w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for i in range(n):
            f.write(("," if i else "") + json.dumps(feature(i), ensure_ascii=False) + "\n")
        f.write("]}\n")
    return path.stat().st_size


async def file_chunks(path: Path, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


# --- the limit: the same rows, raw -------------------------------------------------------------------------


def raw_rows(n: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Facility, history and outbox rows as the import writes them (documents as JSON text)."""
    now = time.time_ns() // 1_000_000
    facilities, history, outbox = [], [], []
    for i in range(n):
        f = feature(i)
        p = f["properties"]
        doc = {**p, "region": p["code"][:6], "geometry": f["geometry"], "unit_id": None, "status": "in_service"}
        doc |= {"thresholds": [], "version": 1, "updated_ms": now}
        text = json.dumps(doc, ensure_ascii=False)
        facilities.append((p["code"], "gas", p["name"], doc["region"], "in_service", 1, now, text))
        history.append(("facility", p["code"], 1, "created", now, "bench", "import bench", None, text))
        outbox.append((f"facility:{p['code']}:1", f"events.assets.facility.{doc['region']}", text.encode(), "{}", 0))
    return facilities, history, outbox


FACILITY_COLS = ("code", "kind", "name", "region", "status", "version", "updated_ms", "doc")
HISTORY_COLS = ("entity", "entity_id", "version", "change", "changed_ms", "actor", "reason", "before", "after")
OUTBOX_COLS = ("id", "subject", "payload", "headers", "attempts")


async def migrate_assets_schema(url: str) -> None:
    from lifeline.assets.app import AssetsApp
    from lifeline.kit.migrations import migrate

    assert AssetsApp.migrations is not None
    await migrate(url, AssetsApp.migrations)


def _insert(table: str, cols: tuple[str, ...], extra: str = "") -> str:
    names = ", ".join(cols) + (", created_at" if extra else "")
    marks = ", ".join("?" * len(cols)) + (f", {extra}" if extra else "")
    return f"INSERT INTO {table} ({names}) VALUES ({marks})"


async def sqlite_limit(path: Path, n: int) -> float:
    """Facilities/s of sqlite3 executemany of their three rows each, one transaction (WAL, like kit.db)."""
    await migrate_assets_schema(f"sqlite+aiosqlite:///{path}")
    facilities, history, outbox = raw_rows(n)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_insert("facilities", FACILITY_COLS), facilities)
        conn.executemany(_insert("asset_history", HISTORY_COLS), history)
        conn.executemany(_insert("outbox", OUTBOX_COLS, "CURRENT_TIMESTAMP"), outbox)
        conn.execute("COMMIT")
        return n / (time.perf_counter() - t0)
    finally:
        conn.close()


async def pg_limit(dsn: str, n: int) -> float:
    """Facilities/s of asyncpg COPY of their three rows each, one transaction."""
    import datetime

    import asyncpg

    await migrate_assets_schema(asyncpg_to_sqlalchemy(dsn))
    facilities, history, outbox = raw_rows(n)
    now = datetime.datetime.now(datetime.UTC)
    outbox_rows = [(*r, now) for r in outbox]
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("facilities", records=facilities, columns=list(FACILITY_COLS))
            await conn.copy_records_to_table("asset_history", records=history, columns=list(HISTORY_COLS))
            cols = [*OUTBOX_COLS, "created_at"]
            await conn.copy_records_to_table("outbox", records=outbox_rows, columns=cols)
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


def box_of_circle(lon: float, lat: float, metres: float) -> tuple[float, float, float, float]:
    dlat = math.degrees(metres / 6_371_008.8)
    dlon = dlat / math.cos(math.radians(lat))
    return lon - dlon, lat - dlat, lon + dlon, lat + dlat


# The circle's bounding box straight to the spatial index: SQLite's R*Tree, PostGIS's GiST (&&).
SQLITE_BOX_SQL = (
    "SELECT entity_id FROM geo_index WHERE rid IN (SELECT id FROM geo_rtree WHERE min_lon <= ? AND max_lon >= ? "
    "AND min_lat <= ? AND max_lat >= ?)"
)
PG_BOX_SQL = "SELECT entity_id FROM geo_index WHERE geom && ST_MakeEnvelope($1, $2, $3, $4, 4490)"


def centres(n: int) -> list[tuple[float, float]]:
    rnd = random.Random(42)
    return [(rnd.uniform(*LON), rnd.uniform(*LAT)) for _ in range(n)]


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def raw_box_latencies(backend: str, db: str, points: list[tuple[float, float]]) -> tuple[list[float], int]:
    """Milliseconds per bounding-box query straight to the database, and the candidates found."""
    out: list[float] = []
    found = 0
    if backend == "sqlite":
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for lon, lat in points:
                min_lon, min_lat, max_lon, max_lat = box_of_circle(lon, lat, RADIUS_M)
                t0 = time.perf_counter()
                found += len(conn.execute(SQLITE_BOX_SQL, (max_lon, min_lon, max_lat, min_lat)).fetchall())
                out.append((time.perf_counter() - t0) * 1000)
        finally:
            conn.close()
        return out, found
    import asyncpg

    pg = await asyncpg.connect(db)
    try:
        for lon, lat in points:
            min_lon, min_lat, max_lon, max_lat = box_of_circle(lon, lat, RADIUS_M)
            t0 = time.perf_counter()
            found += len(await pg.fetch(PG_BOX_SQL, min_lon, min_lat, max_lon, max_lat))
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        await pg.close()
    return out, found


async def wait_outbox_drained(backend: str, db: str, timeout_s: float) -> float:
    """Seconds until the outbox holds no unsent event (BenchError after `timeout_s`)."""
    sql = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if backend == "sqlite":
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                left = int(conn.execute(sql).fetchone()[0])
            finally:
                conn.close()
        else:
            import asyncpg

            pg = await asyncpg.connect(db)
            try:
                left = int(await pg.fetchval(sql))
            finally:
                await pg.close()
        if left == 0:
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    raise BenchError(f"the outbox still holds unsent events {timeout_s:.0f} s after the import")


# --- the server child ------------------------------------------------------------------------------------


async def serve() -> int:
    """Run one assets service from the environment until SIGTERM."""
    from lifeline.assets.app import AssetsApp
    from lifeline.assets.settings import AssetsSettings
    from lifeline.kit.auth import TokenVerifier
    from lifeline.kit.bus import Bus
    from lifeline.kit.config import InstanceSettings
    from lifeline.kit.telemetry import setup_telemetry

    instance = InstanceSettings()
    setup_telemetry(instance)
    bus = Bus(instance.nats_url, name="bench-assets")
    await bus.start()
    await bus.wait_ready(15)
    verifier = TokenVerifier(instance.oidc_issuer, instance.oidc_audience)
    app = AssetsApp(instance=instance, settings=AssetsSettings(), bus=bus, verifier=verifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        assert app.http is not None
        print(f"READY {app.http.url}", flush=True)
        await stop.wait()
    finally:
        await app.stop()
        await bus.close()
        await verifier.aclose()
    return 0


# --- one backend -------------------------------------------------------------------------------------------


async def bench_backend(backend: str, work: Path, idp: BenchIdp, plan: Plan, pg_dsn: str) -> list[Row]:
    from lifeline.kit.natsserver import NatsServer

    tag = "SQLite" if backend == "sqlite" else "PostgreSQL"
    work = work / backend
    work.mkdir(parents=True, exist_ok=True)
    n = plan.facilities
    rows: list[Row] = []
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            limit = await sqlite_limit(work / "limit.db", n)
            limit_name = "SQLite executemany"
            db = str(work / "assets.db")
            db_url = f"sqlite+aiosqlite:///{db}"
        else:
            limit_dsn = await stack.enter_async_context(fresh_pg_database(pg_dsn, "lifeline_bench_assets"))
            limit = await pg_limit(limit_dsn, n)
            limit_name = "PostgreSQL COPY"
            db = await stack.enter_async_context(fresh_pg_database(pg_dsn, "lifeline_bench_assets"))
            db_url = asyncpg_to_sqlalchemy(db)
        log(f"[{tag}] limit: {limit_name} of {n:,} facilities' state, history and outbox rows: {limit:,.0f}/s")

        nats = NatsServer(store_dir=work / "nats")
        nats.start()
        stack.callback(nats.stop)
        env = {
            "LIFELINE_REGION": REGION,
            "LIFELINE_DATA_DIR": str(work),
            "LIFELINE_NATS_URL": nats.url,
            "LIFELINE_OIDC_ISSUER": idp.issuer,
            "LIFELINE_ASSETS_DATABASE_URL": db_url,
            "LIFELINE_ASSETS_HTTP_PORT": "0",
            "LIFELINE_ASSETS_GRPC_PORT": "0",
        }
        proc, ready, _ = start_serve_child("bench.assets", work, env)
        url = ready.split()[1]
        stack.callback(stop_process, proc, 30)
        sampler = RssSampler().start()
        stack.callback(sampler.stop)
        sampler.watch("assets", proc.pid)
        ready_rss = sampler.current("assets")

        path = work / "facilities.geojson"
        size = write_geojson(path, n)
        headers = {"Authorization": f"Bearer {idp.token()}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=900) as client:
            t0 = time.perf_counter()
            resp = await client.post(
                "/v1/import/facility",
                content=file_chunks(path),
                headers={"Content-Type": "application/geo+json"},
                params={"name": path.name},
            )
            took = time.perf_counter() - t0
            if resp.status_code != 200 or resp.json().get("created") != n:
                raise BenchError(f"import failed: {resp.status_code} {resp.text[:2000]}")
            peak = sampler.next_phase().get("assets", 0)
            rate = n / took
            log(
                f"[{tag}] import of {n:,} features ({size / MB:.0f} MB): {took:.1f} s, {rate:,.0f}/s; "
                f"assets RSS {ready_rss / MB:.0f} MB ready, peak {peak / MB:.0f} MB"
            )
            rows.append(
                Row(
                    f"{tag} import, features/s",
                    rate,
                    "",
                    limit,
                    limit_name,
                    GOAL_IMPORT,
                    note=f"{size / MB:.0f} MB file in {took:.1f} s; server RSS peak {peak / MB:.0f} MB "
                    f"(ready {ready_rss / MB:.0f} MB)",
                )
            )

            # The outbox relay publishes the import's events after the commit; let it finish so that the
            # queries are timed on their own (how long it took is a figure of its own).
            drained = await wait_outbox_drained(backend, db, 300)
            log(f"[{tag}] outbox relay published the {n:,} change events in {drained:.1f} s after the commit")
            points = centres(plan.queries)
            latencies: list[float] = []
            found = 0
            for lon, lat in points:
                params = {"near": f"{lon},{lat}", "radius_m": str(RADIUS_M), "limit": "1000"}
                t0 = time.perf_counter()
                r = await client.get("/v1/spatial/features", params=params)
                latencies.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise BenchError(f"radius query failed: {r.status_code} {r.text[:1000]}")
                found += len(r.json()["items"])
        raw, candidates = await raw_box_latencies(backend, db, points)
        log(
            f"[{tag}] radius {RADIUS_M:.0f} m over {n:,}: p50 {p(latencies, 50):.1f} ms, "
            f"p99 {p(latencies, 99):.1f} ms, {found / len(points):.1f} found per query; "
            f"raw box query p99 {p(raw, 99):.2f} ms "
            f"({candidates / len(points):.1f} candidates)"
        )
        rows.append(
            Row(
                f"{tag} radius query p99, ms",
                p(latencies, 99),
                "ms",
                p(raw, 99),
                "raw box SQL p99",
                GOAL_P99_MS,
                higher_is_better=False,
                note=f"p50 {p(latencies, 50):.1f} ms over {len(points)} queries (HTTP client included), "
                f"{found / len(points):.1f} facilities per answer",
            )
        )
    return rows


async def run(quick: bool, backend: str | None, keep: bool) -> int:
    plan = QUICK if quick else FULL
    backend = backend or ("sqlite" if quick else "all")
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    pg_dsn = pg_admin_dsn()
    if "postgres" in backends:
        why = await pg_reachable(pg_dsn)
        if why is not None:
            if backend == "postgres":
                raise BenchError(f"PostgreSQL not reachable at {pg_dsn}: {why}")
            log(f"PostgreSQL not reachable at {pg_dsn} ({why}): SQLite only")
            backends.remove("postgres")
    work = Path(tempfile.mkdtemp(prefix="lifeline-bench-assets-"))
    rows: list[Row] = []
    ok = False
    idp = BenchIdp(work)
    t_start = time.perf_counter()
    load = os.getloadavg()
    try:
        idp.start()
        log(f"assets bench ({'quick' if quick else 'full'}): {plan.facilities:,} facilities, backends {backends}")
        for b in backends:
            rows += await bench_backend(b, work, idp, plan, pg_dsn)
        ok = True
    finally:
        idp.stop()
        print_and_clean("assets", rows, t_start=t_start, load=load, value_header="figure", ok=ok, keep=keep, work=work)
    return 0


def run_cli(args: argparse.Namespace) -> int:
    return run_service_bench(run, args)


def main(argv: list[str] | None = None) -> int:
    return service_bench_main("assets", __doc__ or "assets", argv, run, serve)


if __name__ == "__main__":
    sys.exit(main())
