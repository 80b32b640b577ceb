"""What every benchmark needs: child processes (nats-server, the dev OpenID provider), peak-RSS and CPU
sampling, a fresh PostgreSQL database, and the results table (each figure next to its limit, as a ratio).

A benchmark never hides a failure: anything unexpected raises, the table so far is printed, and
``python -m bench`` exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from lifeline.kit.devidp import DevIdp, DevIdpUnavailable, read_line_starting

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- results --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table: a measured figure, the limit it is compared with, and the goal.

    ``higher_is_better``: throughput rows meet the goal at or above it, memory rows at or below it.
    """

    scenario: str
    value: float
    unit: str
    limit: float | None = None
    limit_name: str = ""
    goal: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.limit if self.limit else None

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal


def fmt_num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit == "MB":
        return f"{x:,.1f} MB"
    if unit == "ms":
        return f"{x:,.2f} ms"
    return f"{x:,.0f}"


def render_table(title: str, rows: list[Row], value_header: str = "readings/s") -> str:
    header = ["scenario", value_header, "limit", "ratio", "goal", "met?"]
    body: list[list[str]] = []
    for r in rows:
        value = fmt_num(r.value, r.unit)
        limit = "-" if r.limit is None else f"{fmt_num(r.limit, r.unit)} ({r.limit_name})"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        if r.goal is None:
            goal = "-"
        else:
            goal = ("≥ " if r.higher_is_better else "≤ ") + fmt_num(r.goal, r.unit)
        met = {None: "-", True: "yes", False: "NO"}[r.met]
        body.append([r.scenario, value, limit, ratio, goal, met])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [title, line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    notes = [f"  {r.scenario}: {r.note}" for r in rows if r.note]
    if notes:
        out.append("notes:")
        out += notes
    return "\n".join(out)


# --- processes: memory and CPU ---------------------------------------------------------------------


def vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's peak resident set size of a live process (Linux /proc/<pid>/status VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples the resident set size of some processes (psutil) in a thread; keeps each one's peak."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self._procs: dict[str, psutil.Process] = {}
        self.peak: dict[str, int] = {}
        self.phase_peak: dict[str, int] = {}
        self.samples: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._procs[name] = psutil.Process(pid)
            self.peak.setdefault(name, 0)
            self.samples.setdefault(name, 0)
        self._sample_one(name)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._procs.pop(name, None)

    def _sample_one(self, name: str) -> None:
        with self._lock:
            proc = self._procs.get(name)
        if proc is None:
            return
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            return
        with self._lock:
            if rss > self.peak.get(name, 0):
                self.peak[name] = rss
            if rss > self.phase_peak.get(name, 0):
                self.phase_peak[name] = rss
            self.samples[name] = self.samples.get(name, 0) + 1

    def current(self, name: str) -> int:
        """Sample one process now and return its RSS."""
        self._sample_one(name)
        with self._lock:
            proc = self._procs.get(name)
        try:
            return int(proc.memory_info().rss) if proc else 0
        except psutil.Error:
            return 0

    def next_phase(self) -> dict[str, int]:
        """The peaks since the previous call (or the start), and start a new phase."""
        for name in list(self._procs):
            self._sample_one(name)
        with self._lock:
            peaks, self.phase_peak = self.phase_peak, {}
        return peaks

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name in list(self._procs):
                self._sample_one(name)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (threads included)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have been busy (not idle, not waiting for I/O)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


@dataclass
class CpuMeter:
    """CPU used by some processes over a stretch of wall time, in % of one core, and by the whole machine.

    The machine is shared: what the machine used beyond our processes ("others") took cores away from
    the benchmark, so a large "others" share means the figures are lower than an idle machine gives.
    """

    pids: dict[str, int]
    _start: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0
    _machine0: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._machine0 = machine_busy_seconds()
        self._start = {n: cpu_seconds(p) for n, p in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        used = {n: cpu_seconds(p) - self._start[n] for n, p in self.pids.items()}
        self.percent = {n: 100.0 * u / self.wall if self.wall > 0 else 0.0 for n, u in used.items()}
        machine = machine_busy_seconds() - self._machine0
        self.machine_percent = 100.0 * machine / self.wall if self.wall > 0 else 0.0
        self.others_percent = max(0.0, self.machine_percent - sum(self.percent.values()))

    def summary(self) -> str:
        ours = ", ".join(f"{n} {pct:.0f}%" for n, pct in self.percent.items())
        cores = psutil.cpu_count() or 1
        return f"{ours}; machine {self.machine_percent:.0f}% of {cores * 100}% (others {self.others_percent:.0f}%)"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM a child we started, SIGKILL it if it does not exit in time; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def wait_for_line(proc: subprocess.Popen[bytes], prefix: str, timeout: float, log_path: Path | None) -> str:
    """Read the child's stdout until a line starting with ``prefix``; raise BenchError if it never comes."""
    line = read_line_starting(proc, prefix, timeout)
    if line is not None:
        return line
    stop_process(proc)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    raise BenchError(f"{proc.args!r} did not print {prefix!r} within {timeout:.0f}s\n{tail}")


# --- the dev OpenID provider with a bench client ---------------------------------------------------

BENCH_CLIENT = "bench-writer"
BENCH_SECRET = "bench-secret"


class BenchIdp:
    """deploy/dev-idp on a free port with one client for the load generator (tokens live an hour)."""

    def __init__(self, workdir: Path, region: str = "340100") -> None:
        self.workdir = workdir
        self.region = region
        self.idp: DevIdp | None = None

    @property
    def issuer(self) -> str:
        assert self.idp is not None
        return self.idp.issuer()

    def start(self) -> None:
        client = {
            "client_id": BENCH_CLIENT,
            "client_secret": BENCH_SECRET,
            "roles": ["service"],
            "region": self.region,
            "audience": "lifeline",
            "access_token_ttl": 3600,
        }
        config = self.workdir / "realms.json"
        config.write_text(json.dumps({"realms": {"lifeline": {"clients": [client]}}}))
        self.idp = DevIdp(port=0, config=config, log_file=self.workdir / "idp.log", new_session=False)
        try:
            self.idp.start()
        except DevIdpUnavailable as exc:
            raise BenchError(str(exc)) from exc

    def token(self) -> str:
        assert self.idp is not None
        resp = httpx.post(
            self.idp.token_endpoint(),
            data={"grant_type": "client_credentials", "client_id": BENCH_CLIENT, "client_secret": BENCH_SECRET},
            timeout=10,
        )
        if resp.status_code != 200:
            raise BenchError(f"token request failed: {resp.status_code} {resp.text}")
        return str(resp.json()["access_token"])

    def stop(self) -> None:
        if self.idp is not None:
            self.idp.stop()
            self.idp = None


# --- PostgreSQL ------------------------------------------------------------------------------------


def pg_admin_dsn() -> str:
    return os.environ.get("LIFELINE_BENCH_PG_DSN") or os.environ.get("LIFELINE_TEST_PG_DSN") or DEFAULT_PG_DSN


async def pg_reachable(dsn: str) -> str | None:
    """None if we can log in to the server, else why not."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@contextlib.asynccontextmanager
async def fresh_pg_database(admin_dsn: str, prefix: str = "lifeline_bench") -> AsyncIterator[str]:
    """A new database on the server (plain postgresql:// DSN), dropped afterwards whatever happens."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield make_url(admin_dsn).set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def asyncpg_to_sqlalchemy(dsn: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(dsn).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


# --- a lean HTTP/1.1 client ---------------------------------------------------------------------------


class RawHttpConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough to POST and read a Content-Length reply.

    httpx costs milliseconds of CPU per request on a slow machine, which would make the load generator
    the bottleneck of one-reading requests; this costs tens of microseconds.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host = host
        self.port = port
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self._reader: Any = None
        self._writer: Any = None

    async def connect(self) -> None:
        import asyncio

        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        if self._writer is None:
            await self.connect()
        head = (
            f"{method} {path} HTTP/1.1\r\n{self._fixed}Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("latin-1") + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise BenchError(f"{method} {path}: unexpected Transfer-Encoding {value.strip()}")
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise BenchError(f"{method} {path}: reply without Content-Length")
        data = await self._reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = self._reader = None


# --- misc ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timer() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


def start_serve_child(module: str, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``python -m <module> serve`` in a child process (log: ``work/<name>.log``); it, its READY line, its log."""
    log_path = work / f"{module.rsplit('.', 1)[-1]}.log"
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "serve"],
            stdout=subprocess.PIPE,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            cwd=work,
        )
    return proc, wait_for_line(proc, "READY", 90, log_path), log_path


def child_env(extra: dict[str, str]) -> dict[str, Any]:
    env = dict(os.environ)
    # The bench package is imported from the checkout, wherever the child's cwd is.
    paths = [str(REPO), env.get("PYTHONPATH", "")]
    if os.environ.get("LIFELINE_BENCH_STALLS"):
        # The stall probe (bench/stalls/sitecustomize.py): garbage collections and event-loop stalls.
        paths.insert(0, str(REPO / "bench" / "stalls"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


def print_and_clean(
    name: str,
    rows: list[Row],
    *,
    t_start: float,
    load: tuple[float, ...],
    value_header: str,
    ok: bool,
    keep: bool,
    work: Path,
) -> None:
    """The end of a benchmark run: its table (with how busy the machine was) and the work directory's fate."""
    if rows:
        title = (
            f"\n{name}: {os.cpu_count()} CPUs, {time.perf_counter() - t_start:.0f} s, load average "
            f"{load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
        )
        print(render_table(title, rows, value_header=value_header), flush=True)
    if ok and not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory (databases, logs) kept: {work}", file=sys.stderr)


def service_bench_main(
    name: str,
    doc: str,
    argv: list[str] | None,
    run: Callable[[bool, str | None, bool], Awaitable[int]],
    serve: Callable[[], Awaitable[int]],
) -> int:
    """``python -m bench.<name> [serve]``: run the benchmark, or be its service child (``serve``)."""
    from bench.ingest import add_run_arguments

    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("serve", help=f"run the {name} service from the environment (the bench's child)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return run_async(serve())
    return run_service_bench(run, args)


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run a bench's or a service child's main on uvloop's event loop, as ``lifeline run`` does.

    For the load generator it matters most: on the standard loop its socket I/O costs about twice the
    CPU per request, taken from the two cores the service under test runs on.
    """
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_service_bench(run: Callable[[bool, str | None, bool], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run a service benchmark from parsed arguments; a failed step is printed and exits 1."""
    try:
        return run_async(run(args.quick, args.backend, args.keep))
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
