"""The ``lifeline`` command: ``run`` an instance's services, the ``demo``, the ``simulate``-d sensors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from lifeline.kit.config import InstanceSettings, Tier, validate_region

# Services, the bus and the web stack are imported by the commands that need them: `lifeline --help`
# and argument errors stay fast.

log = logging.getLogger("lifeline.launcher")


def _region(value: str) -> str:
    try:
        return validate_region(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lifeline``."""
    parser = argparse.ArgumentParser(
        prog="lifeline",
        description="Lifeline: city infrastructure lifeline safety (城市基础设施生命线安全工程).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,demo,simulate,census}")

    run = sub.add_parser(
        "run",
        help="run an instance's services",
        description="Run services of one instance (tier + region). Settings come from LIFELINE_* "
        "environment variables (LIFELINE_NATS_URL, LIFELINE_OIDC_ISSUER, LIFELINE_DATA_DIR, "
        "LIFELINE_INGEST_HTTP_PORT, …); the flags override them.",
    )
    run.add_argument("--tier", choices=[t.value for t in Tier], help="instance tier (env LIFELINE_TIER)")
    run.add_argument("--region", type=_region, help="GB/T 2260 region code, e.g. 340100 (env LIFELINE_REGION)")
    run.add_argument(
        "--services",
        default="all",
        help="'all' (every service the tier runs) or a comma-separated list, e.g. ingest",
    )
    run.add_argument(
        "--processes",
        action="store_true",
        help="one supervised child process per service (microservices mode) instead of one process",
    )

    demo = sub.add_parser(
        "demo",
        help="a whole city instance (Hefei) with NATS, the dev identity provider and the simulator",
        description="Start nats-server, the dev OpenID provider and a city instance of Hefei (340100), "
        "feed it with simulated sensors (gas leak and water-main burst included) and show where to look.",
    )
    demo.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="where the demo keeps its data")
    demo.add_argument("--speed", type=_positive, default=1.0, help="simulation speed (>1 replays faster)")
    demo.add_argument("--duration", type=_positive, help="stop after this many seconds (exit 0 if readings stored)")
    demo.add_argument("--fresh", action="store_true", help="delete the data dir first")
    demo.add_argument("--backfill-hours", type=float, default=2.0, help="history posted before going live")
    demo.add_argument("--free-ports", action="store_true", help="free ports instead of the usual 8101, 8180, 14222, …")

    sim = sub.add_parser(
        "simulate",
        help="post simulated sensor readings to a running ingest service",
        description="The sensor simulator alone, against a running instance.",
    )
    sim.add_argument("--url", default="http://127.0.0.1:8101", help="ingest base URL")
    sim.add_argument(
        "--issuer",
        default=os.environ.get("LIFELINE_OIDC_ISSUER", "http://127.0.0.1:8180/realms/lifeline"),
        help="OIDC issuer (env LIFELINE_OIDC_ISSUER)",
    )
    sim.add_argument("--client-id", default="simulator")
    sim.add_argument(
        "--client-secret",
        default=os.environ.get("LIFELINE_SIM_CLIENT_SECRET", "dev-secret"),
        help="(env LIFELINE_SIM_CLIENT_SECRET)",
    )
    sim.add_argument("--speed", type=_positive, default=1.0, help="simulation speed (>1 replays faster)")
    sim.add_argument("--sensors", type=Path, help="sensor registry CSV (default: the Hefei sample)")
    sim.add_argument("--quantities", type=Path, help="operator quantity catalogue (overlays the default)")
    sim.add_argument("--seed", type=int, default=340100)
    sim.add_argument("--backfill-hours", type=float, default=0.0)
    sim.add_argument("--gas-leak-at", type=float, default=300.0, help="seconds after start (<0: none)")
    sim.add_argument("--burst-at", type=float, default=900.0, help="seconds after start (<0: none)")
    sim.add_argument("--rate", type=float, default=5000.0, help="max readings per second (0: no cap)")

    # The census generator parses its own arguments (`lifeline census --help`): importing it here would
    # put its module (~1 MB) into every `lifeline run` process.
    sub.add_parser(
        "census",
        help="write the sample census of Hefei and Wuhu (facilities, sensors, links, risk sources, units)",
        add_help=False,
    )
    return parser


def instance_settings(tier: str | None = None, region: str | None = None) -> InstanceSettings:
    """Instance settings from the environment, with the given flags taking precedence."""
    overrides: dict[str, str] = {}
    if tier is not None:
        overrides["tier"] = tier
    if region is not None:
        overrides["region"] = region
    return InstanceSettings(**overrides)  # type: ignore[arg-type]


def cmd_run(args: argparse.Namespace) -> int:
    from lifeline.kit.telemetry import setup_telemetry

    from .instance import ServiceSelectionError, run_processes, run_single_process, services_for

    try:
        settings = instance_settings(args.tier, args.region)
        names = services_for(args.services, settings.tier)
    except (ValidationError, ServiceSelectionError) as exc:
        print(f"lifeline run: {exc}", file=sys.stderr)
        return 2
    setup_telemetry(settings)
    runner = run_processes if args.processes else run_single_process
    # uvloop (uvicorn[standard] brings it): socket I/O in C, a third less CPU for a small request.
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
        return loop.run(runner(settings, names))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    opts = DemoOptions(
        data_dir=args.data_dir,
        speed=args.speed,
        duration=args.duration,
        fresh=args.fresh,
        backfill_hours=args.backfill_hours,
        free_ports=args.free_ports,
    )
    return asyncio.run(run_demo(opts))


def cmd_simulate(args: argparse.Namespace) -> int:
    from lifeline.kit.auth import ClientCredentials, TokenRequestError
    from lifeline.kit.catalogue import load_quantities, load_sensors
    from lifeline.kit.telemetry import configure_logging

    from .demo import REPLAY_S, catch_up_clock
    from .instance import install_stop_signals
    from .simulator import GasLeak, Simulator, WaterBurst, run_simulator, sample_sensors

    configure_logging(level="INFO", json_lines=False)
    catalogue = load_quantities(args.quantities)
    sensors = load_sensors(args.sensors, catalogue) if args.sensors else sample_sensors(catalogue)
    lead_s = REPLAY_S if args.speed > 1 else 0.0
    sim = Simulator(
        sensors,
        catalogue,
        args.seed,
        int(time.time() * 1000 - lead_s * 1000),
        args.speed,
        gas_leak=GasLeak(start_s=args.gas_leak_at) if args.gas_leak_at >= 0 else None,
        water_burst=WaterBurst(start_s=args.burst_at) if args.burst_at >= 0 else None,
    )
    for inc in sim.incidents.values():
        log.info("scripted %s at +%ds on %s", inc.kind, (inc.start_ms - sim.start_ms) // 1000, inc.primary)

    async def go() -> int:
        stop = asyncio.Event()
        remove = install_stop_signals(stop)
        creds = ClientCredentials(args.issuer, args.client_id, args.client_secret)
        try:
            await creds.token()
        except TokenRequestError as exc:
            print(f"lifeline simulate: {exc}", file=sys.stderr)
            await creds.aclose()
            remove()
            return 1
        try:
            stats = await run_simulator(
                args.url,
                creds.token,
                sim,
                rate=args.rate,
                stop_event=stop,
                backfill_hours=args.backfill_hours,
                clock=catch_up_clock(args.speed, lead_s),
            )
        finally:
            remove()
            await creds.aclose()
        log.info("simulator stopped: %s", stats.as_dict())
        return 0

    return asyncio.run(go())


def cmd_census(args: argparse.Namespace) -> int:
    from .census import main as census_main

    return census_main(args.census_args)


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "simulate": cmd_simulate, "census": cmd_census}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lifeline`` command."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "census":
        args.census_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
