"""The `lifeline` command: arguments, the service registry and tier rules, and `lifeline run` as a real
process against a real nats-server and the dev OpenID provider."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from lifeline.kit.bus import Bus
from lifeline.kit.config import Tier
from lifeline.kit.natsserver import free_port
from lifeline.kit.runtime import Service
from lifeline.kit.testing.census import mark_census_complete
from lifeline.launcher import cli
from lifeline.launcher.instance import (
    SERVICES,
    SETTINGS,
    TIER_SERVICES,
    ServiceSelectionError,
    Supervisor,
    load_service,
    load_settings,
    services_for,
)

LIFELINE = Path(sys.executable).parent / "lifeline"
# Not the region of the ingest tests' fixtures: the durable consumers and subjects carry the region, so
# this instance and theirs never share a consumer on a worker's nats-server.
REGION = "340200"


# ─────────────────────────────── arguments ───────────────────────────────


def test_run_arguments() -> None:
    args = cli.build_parser().parse_args(
        ["run", "--tier", "city", "--region", "340100", "--services", "ingest", "--processes"]
    )
    assert (args.command, args.tier, args.region, args.services, args.processes) == (
        "run",
        "city",
        "340100",
        "ingest",
        True,
    )


def test_run_defaults_leave_tier_and_region_to_the_environment() -> None:
    args = cli.build_parser().parse_args(["run"])
    assert args.tier is None and args.region is None
    assert args.services == "all" and args.processes is False


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--region", "3401"],
        ["run", "--tier", "county"],
        ["demo", "--speed", "0"],
        ["demo", "--duration", "-5"],
        ["simulate", "--speed", "fast"],
        [],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_census_takes_its_own_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `lifeline census` hands its arguments to the generator's parser (not imported to build ours).
    with pytest.raises(SystemExit) as exc:
        cli.main(["census", "--region", "nowhere"])
    assert exc.value.code == 2
    assert "lifeline census: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--region", "340100", "--check"])
    assert exc.value.code == 2
    assert cli.main(["census", "--check", "--out", str(tmp_path), "--region", "340200"]) == 1
    assert "stale:" in capsys.readouterr().err


def test_demo_arguments() -> None:
    args = cli.build_parser().parse_args(["demo"])
    assert (args.data_dir, args.speed, args.duration, args.fresh) == (Path("var/demo"), 1.0, None, False)
    args = cli.build_parser().parse_args(
        ["demo", "--data-dir", "/tmp/x", "--speed", "10", "--duration", "40", "--fresh"]
    )
    assert (args.data_dir, args.speed, args.duration, args.fresh) == (Path("/tmp/x"), 10.0, 40.0, True)


def test_simulate_arguments() -> None:
    args = cli.build_parser().parse_args(
        [
            "simulate",
            "--url",
            "http://127.0.0.1:9999",
            "--client-id",
            "simulator",
            "--client-secret",
            "s3cret",
            "--issuer",
            "http://127.0.0.1:8180/realms/lifeline",
            "--speed",
            "5",
            "--sensors",
            "sensors.csv",
        ]
    )
    assert args.url == "http://127.0.0.1:9999"
    assert (args.client_id, args.client_secret) == ("simulator", "s3cret")
    assert args.issuer == "http://127.0.0.1:8180/realms/lifeline"
    assert (args.speed, args.sensors) == (5.0, Path("sensors.csv"))


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_TIER", "province")
    monkeypatch.setenv("LIFELINE_REGION", "340000")
    monkeypatch.setenv("LIFELINE_NATS_URL", "nats://10.0.0.1:4222")
    from_env = cli.instance_settings()
    assert (from_env.tier, from_env.region) == (Tier.PROVINCE, "340000")
    flagged = cli.instance_settings("city", "340100")
    assert (flagged.tier, flagged.region) == (Tier.CITY, "340100")
    assert flagged.nats_url == "nats://10.0.0.1:4222"


def test_run_refuses_what_the_tier_does_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--tier", "province", "--region", "340000", "--services", "ingest"]) == 2
    assert "does not run at the province tier" in capsys.readouterr().err
    # alerts runs at every tier now, so "all" always finds something; a city service still does not run above.
    assert cli.main(["run", "--tier", "national", "--region", "100000", "--services", "assets"]) == 2
    assert "does not run at the national tier" in capsys.readouterr().err


# ─────────────────────────────── registry and tiers ───────────────────────────────


def test_every_registered_service_loads_and_runs_at_some_tier() -> None:
    for name in SERVICES:
        cls = load_service(name)
        assert issubclass(cls, Service)
        assert cls.name == name
        assert any(name in allowed for allowed in TIER_SERVICES.values())
        # The supervisor wires peers from SETTINGS: it must name the very class the service uses.
        assert load_settings(name) is cls.settings_cls
    assert set(SETTINGS) == set(SERVICES)


def test_ingest_is_a_city_service() -> None:
    from lifeline.ingest.app import IngestApp

    assert load_service("ingest") is IngestApp
    assert "ingest" in TIER_SERVICES[Tier.CITY]
    assert "ingest" not in TIER_SERVICES[Tier.PROVINCE]
    assert "ingest" not in TIER_SERVICES[Tier.NATIONAL]


def test_all_means_every_existing_service_of_the_tier() -> None:
    assert services_for("all", "city") == [n for n in SERVICES if n in TIER_SERVICES[Tier.CITY]]
    assert "ingest" in services_for("all", Tier.CITY)
    for tier in (Tier.PROVINCE, Tier.NATIONAL):
        expected = [n for n in SERVICES if n in TIER_SERVICES[tier]]
        if expected:
            assert services_for("all", tier) == expected
            assert "ingest" not in expected
        else:
            with pytest.raises(ServiceSelectionError, match="nothing to run"):
                services_for("all", tier)


def test_named_services() -> None:
    assert services_for("ingest", "city") == ["ingest"]
    assert services_for(" ingest , ingest ", "city") == ["ingest"]
    with pytest.raises(ServiceSelectionError, match="unknown service 'nope'"):
        services_for("ingest,nope", "city")
    with pytest.raises(ServiceSelectionError, match="province"):
        services_for("ingest", "province")
    with pytest.raises(ServiceSelectionError):
        services_for("all,ingest", "city")
    with pytest.raises(ServiceSelectionError):
        services_for(" , ", "city")


def test_children_run_one_service_with_the_parents_settings() -> None:
    settings = cli.instance_settings("city", "340100")
    sup = Supervisor(settings, ["ingest"])
    cmd = sup.command("ingest")
    assert cmd[:3] == [sys.executable, "-m", "lifeline.launcher.cli"]
    assert cmd[3:] == ["run", "--tier", "city", "--region", "340100", "--services", "ingest"]
    env = sup.child_env()
    assert (env["LIFELINE_TIER"], env["LIFELINE_REGION"]) == ("city", "340100")


_SUPERVISOR_WIRING_AND_SAY_WHAT_IT_IMPORTED = (
    "import sys\n"
    "from lifeline.launcher import cli\n"
    "from lifeline.launcher.instance import Supervisor\n"
    "cli.build_parser().parse_args(['run', '--processes'])\n"
    "sup = Supervisor(cli.instance_settings('city', '340100'), ['assets', 'ingest', 'alerts'])\n"
    "assert sup.child_env()['LIFELINE_ASSETS_INGEST_GRPC']\n"
    "heavy = ('sqlalchemy', 'fastapi', 'grpc', 'lifeline.ingest.app', 'lifeline.launcher.census')\n"
    "print(sorted(m for m in heavy if m in sys.modules))\n"
)


def test_the_supervisor_imports_no_service() -> None:
    # Microservices mode: the parent only starts and restarts children; the web, database and gRPC
    # stacks (~70 MB of RSS) live in the children alone, and the census generator in `lifeline census`.
    assert _last_line_printed_by(_SUPERVISOR_WIRING_AND_SAY_WHAT_IT_IMPORTED) == "[]"


_SERVICES_SAY_WHAT_THEY_IMPORTED = (
    "import sys\n"
    "from lifeline.launcher import cli\n"
    "import lifeline.ingest.app, lifeline.alerts.app, lifeline.kit.migrations\n"
    "from lifeline.kit.auth import TokenVerifier\n"
    "TokenVerifier('http://127.0.0.1:1/realms/x', 'lifeline')\n"
    "unused = ('sqlalchemy.dialects.postgresql', 'keycloak', 'requests', 'rich', 'pygments', 'watchfiles')\n"
    "print(sorted(m for m in unused if sys.modules.get(m) is not None))\n"
)


def test_services_on_sqlite_import_nothing_they_do_not_use() -> None:
    # RSS of ingest and alerts (issues #2, #4): SQLAlchemy's PostgreSQL dialect (~4.6 MB) only on
    # PostgreSQL, python-keycloak (~18 MB) only in a process that fetches service tokens
    # (ClientCredentials), neither httpx's command line (rich, pygments) nor uvicorn's --reload
    # watcher (~3 MB).
    assert _last_line_printed_by(_SERVICES_SAY_WHAT_THEY_IMPORTED) == "[]"


def test_ingest_app_imports_no_grpc_until_it_serves_grpc() -> None:
    # What ingest's storage process imports (it builds the app, serves no gRPC, verifies no token): not
    # the front's gRPC servicers, grpc (~9.5 MB) or jwcrypto (~9.7 MB with cryptography).
    code = (
        "import sys\n"
        "from lifeline.launcher import cli\n"
        "import lifeline.ingest.app, lifeline.ingest.consumers, lifeline.kit.runtime, lifeline.kit.migrations\n"
        "unused = ('lifeline.ingest.grpc', 'grpc', 'jwcrypto', 'cryptography')\n"
        "print(sorted(m for m in unused if sys.modules.get(m) is not None))\n"
    )
    assert _last_line_printed_by(code) == "[]"


def test_the_bench_service_children_import_none_of_the_bench_tooling() -> None:
    # `python -m bench.<name> serve` is the process whose RSS the benches report (issue #4's alerts
    # figure): the bench package must not bring httpx's command line (rich, pygments) into it.
    repo = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys\nsys.path.insert(0, {repo!r})\nimport bench.alerts\n"
        "print(sorted(m for m in ('rich', 'pygments') if m in sys.modules))\n"
    )
    assert _last_line_printed_by(code) == "[]"


def _last_line_printed_by(code: str) -> str:
    """Run ``code`` in a fresh Python (what a process imports depends on what ran before in it)."""
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout.strip().splitlines()[-1]


# ─────────────────────────────── `lifeline run` as a process ───────────────────────────────


@pytest.fixture
def run_env(nats_server, oidc_provider, tmp_path: Path) -> dict[str, str]:
    if not nats_server.running:
        nats_server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_NATS_URL": nats_server.url,
            "LIFELINE_OIDC_ISSUER": oidc_provider.issuer,
            # The instance's service account: ingest reads its sensor registry from assets with it.
            "LIFELINE_OIDC_CLIENT_ID": "svc",
            "LIFELINE_OIDC_CLIENT_SECRET": "secret-svc",
            "LIFELINE_DATA_DIR": str(tmp_path / "data"),
            "LIFELINE_INGEST_HTTP_PORT": str(free_port()),
            "LIFELINE_INGEST_GRPC_PORT": str(free_port()),
            "LIFELINE_ASSETS_HTTP_PORT": str(free_port()),
            "LIFELINE_ASSETS_GRPC_PORT": str(free_port()),
            # Never a service's default port: two tests running the whole city at once on two workers
            # both took alerts' 8103, and the second instance could not start.
            "LIFELINE_ALERTS_HTTP_PORT": str(free_port()),
            "LIFELINE_ALERTS_GRPC_PORT": str(free_port()),
            "LIFELINE_LOG_JSON": "false",
        }
    )
    return env


def _ready_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['LIFELINE_INGEST_HTTP_PORT']}/readyz"


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> dict:
    # A guard against a hang, not a speed goal: on a busy machine the start-up (the migrations child
    # included) can take half a minute.
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"lifeline exited early with {proc.returncode}:\n{_output(proc)[-3000:]}"
        try:
            resp = httpx.get(url, timeout=2)
            if resp.status_code == 200:
                return resp.json()
            last = resp.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    # What the process said is what tells why.
    raise AssertionError(f"{url} not ready within {timeout}s: {last}\n{_output(proc)[-4000:]}")


# Each process's output goes to a file, not a pipe nobody reads while it runs: a pipe that fills (64 KiB,
# e.g. retries logged with tracebacks on a busy machine) blocks the process inside a logging call.
_LOGS: dict[int, Path] = {}


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = Path(env["LIFELINE_DATA_DIR"]).parent / f"lifeline-{len(_LOGS)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(LIFELINE), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    _LOGS[proc.pid] = log
    return proc


def _output(proc: subprocess.Popen[bytes]) -> str:
    log = _LOGS.get(proc.pid)
    return log.read_text(errors="replace") if log is not None and log.exists() else ""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"lifeline did not stop within {timeout}s:\n{_output(proc)[-3000:]}") from None
    return proc.returncode, _output(proc)


def test_run_single_process_serves_then_stops_on_sigterm(run_env: dict[str, str]) -> None:
    proc = _spawn(["run", "--tier", "city", "--region", REGION, "--services", "all"], run_env)
    try:
        body = _wait_ready(_ready_url(run_env), proc)
        # The registry is ready once ingest read the census assets keeps on the bus.
        assert body["checks"] == {"database": "ok", "bus": "ok", "registry": "ok"}
        # The service's own database lives in the instance's data directory.
        assert (Path(run_env["LIFELINE_DATA_DIR"]) / "ingest.db").is_file()
        started = time.monotonic()
        rc, err = _stop(proc)
        assert rc == 0, err[-3000:]
        assert time.monotonic() - started < 10
        assert "service ingest stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_service_that_cannot_start_stops_the_others_and_the_process_exits(run_env: dict[str, str]) -> None:
    # alerts starts last; its HTTP port is taken. The services started before it are stopped and the
    # process ends with 1 and says why, rather than living on half started (or hanging in the stop).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**run_env, "LIFELINE_ALERTS_HTTP_PORT": str(taken.getsockname()[1])}
        proc = _spawn(["run", "--tier", "city", "--region", REGION, "--services", "all"], env)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"lifeline still running 90 s later:\n{_output(proc)[-3000:]}") from None
    out = _output(proc)
    assert rc == 1, out[-3000:]
    assert "failed to start" in out
    for name in ("assets", "ingest"):
        assert f"service {name} stopped" in out, out[-3000:]


@pytest.mark.parametrize("registry", ["file", "assets"])
def test_ingest_storage_process_loads_neither_grpc_nor_jwcrypto(
    run_env: dict[str, str], tmp_path: Path, registry: str
) -> None:
    # RSS of ingest's storage process (issue #2): it serves no gRPC and verifies no token, so neither
    # grpc's core (~9.5 MB) nor jwcrypto with cryptography's native library (~9.7 MB) is loaded — with a
    # sensors file, and following assets too: it reads the census on the bus (no gRPC call to assets, no
    # service token, so no python-keycloak with requests and its charset_normalizer either).
    env = {**run_env, "LIFELINE_INGEST_ROLES": "storage"}
    if registry == "file":
        sensors = tmp_path / "sensors.csv"
        sensors.write_text(
            "sensor_id,quantity,unit,region,facility_code,interval_s,lat,lon,status\n"
            f"S-1,gas.ch4,%LEL,{REGION},{REGION}1102000001,60,31.8,117.2,active\n"
        )
        env["LIFELINE_INGEST_SENSORS_FILE"] = str(sensors)
    else:
        asyncio.run(_mark_census_complete(env["LIFELINE_NATS_URL"]))
    proc = _spawn(["run", "--tier", "city", "--region", REGION, "--services", "ingest"], env)
    try:
        body = _wait_ready(_ready_url(env), proc)
        assert body["checks"] == {"database": "ok", "bus": "ok", "registry": "ok"}
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        for library in ("cygrpc", "cryptography", "charset_normalizer"):
            assert library not in maps, library
        rc, err = _stop(proc)
        assert rc == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _mark_census_complete(nats_url: str) -> None:
    bus = Bus(nats_url, name="test-census")
    await bus.start()
    try:
        await bus.wait_ready(10)
        await mark_census_complete(bus, REGION)
    finally:
        await bus.close()


def test_run_processes_restarts_a_dead_child_and_stops_all_on_sigterm(run_env: dict[str, str]) -> None:
    proc = _spawn(["run", "--tier", "city", "--region", REGION, "--processes"], run_env)
    try:
        _wait_ready(_ready_url(run_env), proc, timeout=90)
        parent = psutil.Process(proc.pid)
        children = parent.children()
        # One child per service of the tier.
        assert len(children) == len(services_for("all", "city"))
        assert all("--services" in c.cmdline() for c in children)
        (first,) = [c for c in children if "ingest" in c.cmdline()]
        first.kill()  # a crash, not a graceful stop
        first.wait(10)
        # Restarted after a short backoff, on the same ports.
        deadline = time.monotonic() + 30

        def ingest_children() -> list[psutil.Process]:
            return [c for c in parent.children() if c.pid != first.pid and "ingest" in c.cmdline()]

        while time.monotonic() < deadline and not ingest_children():
            time.sleep(0.2)
        (second,) = ingest_children()
        assert second.pid != first.pid
        _wait_ready(_ready_url(run_env), proc, timeout=90)
        rc, err = _stop(proc, timeout=30)
        assert rc == 0, err[-3000:]
        assert "restarting" in err
        assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
