"""An instance's services: which exist, which a tier runs, and running them in one process or in many.

Single-process mode builds every service on one event loop with one shared ``Bus`` and ``TokenVerifier``
(the small-city, demo and test setup); microservices mode (``--processes``) runs each service in a child
process of its own and restarts the children that die. Kubernetes runs one service per pod instead
(``lifeline run --services <one>``), without the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lifeline.kit.config import InstanceSettings, ServiceSettings, Tier
from lifeline.kit.telemetry import flush_telemetry, service_context

# The services, the bus, the verifier and the database are imported where an instance starts: the
# supervisor of microservices mode needs none of them (~45 MB instead of ~118 MB).
if TYPE_CHECKING:
    from lifeline.kit.auth import TokenVerifier
    from lifeline.kit.bus import Bus
    from lifeline.kit.runtime import Service

log = logging.getLogger("lifeline.launcher")

T = TypeVar("T")

# Every service of an instance, in start order ("module:Class", imported only when it runs).
# Adding a service is one line here and one in SETTINGS; the tier rules below already know the planned ones.
SERVICES: dict[str, str] = {
    # The census first: ingest's sensor registry and alerts' census copy read it.
    "assets": "lifeline.assets.app:AssetsApp",
    "ingest": "lifeline.ingest.app:IngestApp",
    "alerts": "lifeline.alerts.app:AlertsApp",
}
# Each service's settings class ("module:Class", the ``settings_cls`` of its class above): what the
# supervisor reads to wire peers without importing the services themselves.
SETTINGS: dict[str, str] = {
    "assets": "lifeline.assets.settings:AssetsSettings",
    "ingest": "lifeline.ingest.settings:IngestSettings",
    "alerts": "lifeline.alerts.settings:AlertsSettings",
}

# Settings that hold another service's gRPC address: service -> {setting: peer}. When the peer runs in
# the same instance the launcher fills them in (the real address of a peer started before in the same
# process, else the peer's configured port); explicit settings overrides win, and so does the
# environment of a child process in microservices mode.
PEERS: dict[str, dict[str, str]] = {
    "assets": {"ingest_grpc": "ingest"},
}

# What each tier runs (DESIGN §1). ``--services all`` means these, of the services that exist.
_EVERY_TIER = frozenset({"alerts", "reporting", "federation"})
TIER_SERVICES: dict[Tier, frozenset[str]] = {
    # The census is kept where the facilities are; the tiers above see it through federation.
    Tier.CITY: _EVERY_TIER | {"ingest", "assets"},
    Tier.PROVINCE: _EVERY_TIER,
    Tier.NATIONAL: _EVERY_TIER,
}


class ServiceSelectionError(ValueError):
    """The requested services cannot run (unknown, or not at this tier)."""


def services_for(spec: str, tier: Tier | str) -> list[str]:
    """The services ``--services`` names for ``tier`` (``all`` or a comma list), in start order."""
    tier = Tier(tier)
    allowed = TIER_SERVICES[tier]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        raise ServiceSelectionError("no service named; use --services all or e.g. --services ingest")
    if "all" in wanted:
        if len(wanted) > 1:
            raise ServiceSelectionError("'all' cannot be combined with service names")
        chosen = [name for name in SERVICES if name in allowed]
        if not chosen:
            planned = ", ".join(sorted(allowed))
            raise ServiceSelectionError(
                f"nothing to run yet at the {tier} tier: it runs {planned}, none of which exists yet"
            )
        return chosen
    for name in wanted:
        if name not in SERVICES:
            known = ", ".join(SERVICES)
            raise ServiceSelectionError(f"unknown service {name!r}; available: {known}")
        if name not in allowed:
            raise ServiceSelectionError(f"service {name!r} does not run at the {tier} tier")
    return [name for name in SERVICES if name in wanted]


def load_service(name: str) -> type[Service]:
    """Import the class of a registered service."""
    from lifeline.kit.runtime import Service

    return _load(SERVICES[name], Service)


def load_settings(name: str) -> type[ServiceSettings]:
    """Import the settings class of a registered service (without the service)."""
    return _load(SETTINGS[name], ServiceSettings)


def _load(ref: str, base: type[T]) -> type[T]:
    module_name, _, attr = ref.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{ref} is not a {base.__module__}.{base.__qualname__}")
    return cls


@dataclass
class Instance:
    """Some services of one instance on the current event loop, sharing a bus and a token verifier.

    ``settings_overrides`` maps a service name to keyword arguments for its settings class; they win
    over the service's environment (the demo uses them for ports and sample files).
    ``migrate_in_child`` migrates every service's database in a short-lived child process before any
    service starts, so this process never imports Alembic (``lifeline run``: ~10 MB less RSS); otherwise
    each service migrates in-process as it starts (tests, the demo: no extra process start per database).
    """

    settings: InstanceSettings
    names: Sequence[str]
    settings_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    migrate_in_child: bool = False
    services: dict[str, Service] = field(default_factory=dict, init=False)
    bus: Bus | None = field(default=None, init=False)
    verifier: TokenVerifier | None = field(default=None, init=False)

    async def start(self, *, bus_wait_s: float = 10.0) -> None:
        """Connect the bus, then build and start each service in order; on failure stop what started."""
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        from lifeline.kit.auth import TokenVerifier
        from lifeline.kit.bus import Bus
        from lifeline.kit.migrations import migrate_in_child

        classes = {name: load_service(name) for name in self.names}
        if self.migrate_in_child:
            await migrate_in_child(
                [
                    (
                        cls.settings_cls(**dict(self.settings_overrides.get(name, {}))).database_url_for(s),
                        cls.migrations,
                    )
                    for name, cls in classes.items()
                    if cls.migrations is not None
                ]
            )
        self.bus = Bus(s.nats_url, name=f"lifeline-{s.tier}-{s.region}", user=s.nats_user, password=s.nats_password)
        # Services start without NATS too (they report not ready and catch up); waiting a little first
        # keeps the common start-up free of "bus not connected" warnings.
        await self.bus.start(wait=bus_wait_s)
        if not self.bus.connected:
            log.warning("NATS at %s not reachable yet; services start and wait for it", s.nats_url)
        self.verifier = TokenVerifier(s.oidc_issuer, s.oidc_audience)
        try:
            for name, cls in classes.items():
                wired = peer_addresses(name, self.names, self.services, self.settings_overrides)
                svc_settings: ServiceSettings = cls.settings_cls(
                    **{**wired, **dict(self.settings_overrides.get(name, {}))}
                )
                svc = cls(instance=s, settings=svc_settings, bus=self.bus, verifier=self.verifier)
                with service_context(name):
                    await svc.start()
                self.services[name] = svc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the services in reverse order, then close the bus and the verifier."""
        for name in reversed(list(self.services)):
            svc = self.services.pop(name)
            try:
                with service_context(name):
                    await svc.stop()
            except Exception:
                log.exception("stopping service %s failed", name)
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
        if self.verifier is not None:
            await self.verifier.aclose()
            self.verifier = None


def peer_addresses(
    name: str,
    names: Sequence[str],
    started: Mapping[str, Service],
    overrides: Mapping[str, Mapping[str, Any]],
) -> dict[str, str]:
    """Settings of service ``name`` pointing at the gRPC servers of its peers in this instance: the real
    address of a peer already started in this process, else the port the peer is configured with."""
    out: dict[str, str] = {}
    for setting, peer in PEERS.get(name, {}).items():
        if peer not in names:
            continue
        svc = started.get(peer)
        if svc is not None and svc.grpc is not None:
            out[setting] = svc.grpc.address
            continue
        configured = load_settings(peer)(**dict(overrides.get(peer, {})))
        if configured.grpc_port:  # 0 (a free port at start) cannot be told before the peer runs
            host = "127.0.0.1" if configured.http_host in ("", "0.0.0.0") else configured.http_host
            out[setting] = f"{host}:{configured.grpc_port}"
    return out


def peer_env(names: Sequence[str]) -> dict[str, str]:
    """Environment telling each child process where the peers it needs listen."""
    env: dict[str, str] = {}
    for name in names:
        prefix = str(load_settings(name).model_config.get("env_prefix", ""))
        for setting, address in peer_addresses(name, names, {}, {}).items():
            env[f"{prefix}{setting}".upper()] = address
    return env


def install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGINT/SIGTERM; returns a function that removes the handlers."""
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in sigs:
            loop.remove_signal_handler(sig)

    return remove


async def run_single_process(settings: InstanceSettings, names: Sequence[str]) -> int:
    """Run the services in this process until SIGINT/SIGTERM; 0 after a clean stop."""
    stop = asyncio.Event()
    remove = install_stop_signals(stop)
    instance = Instance(settings, names, migrate_in_child=True)
    try:
        try:
            await instance.start()
        except Exception:
            log.exception("instance %s/%s failed to start", settings.tier, settings.region)
            return 1
        log.info(
            "instance running",
            extra={"tier": str(settings.tier), "region": settings.region, "services": list(names)},
        )
        await stop.wait()
        log.info("stopping", extra={"services": list(names)})
        await instance.stop()
        return 0
    finally:
        remove()
        flush_telemetry()


# ───────────────────────────────────── microservices mode ─────────────────────────────────────


@dataclass
class Supervisor:
    """One child process per service (``lifeline run --services <name>``), restarted with backoff."""

    settings: InstanceSettings
    names: Sequence[str]
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    # A child that ran this long counts as healthy: its next crash restarts it quickly again.
    healthy_after_s: float = 60.0
    stop_timeout_s: float = 30.0
    restarts: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def command(self, name: str) -> list[str]:
        """The child's command line."""
        return [
            sys.executable,
            "-m",
            "lifeline.launcher.cli",
            "run",
            "--tier",
            str(self.settings.tier),
            "--region",
            self.settings.region,
            "--services",
            name,
        ]

    def child_env(self) -> dict[str, str]:
        env = {**peer_env(self.names), **os.environ}
        # The flags given to the parent override its environment; the children must see the same.
        env["LIFELINE_TIER"] = str(self.settings.tier)
        env["LIFELINE_REGION"] = self.settings.region
        return env

    async def _keep_running(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.initial_backoff_s
        while not self._stopping.is_set():
            # Own session: a terminal's Ctrl-C reaches the supervisor only, which stops children in order.
            proc = await asyncio.create_subprocess_exec(
                *self.command(name), env=self.child_env(), start_new_session=True
            )
            self._procs[name] = proc
            started = loop.time()
            log.info("service %s started as pid %d", name, proc.pid)
            if self._stopping.is_set():
                _terminate(proc)
            rc = await proc.wait()
            if self._stopping.is_set():
                log.info("service %s (pid %d) exited with %d", name, proc.pid, rc)
                return
            if loop.time() - started >= self.healthy_after_s:
                backoff = self.initial_backoff_s
            self.restarts[name] = self.restarts.get(name, 0) + 1
            log.warning("service %s (pid %d) exited with %d; restarting in %.0f s", name, proc.pid, rc, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    async def run(self, stop: asyncio.Event) -> int:
        """Run the children until ``stop`` is set, then SIGTERM them and wait (SIGKILL after a timeout)."""
        tasks = [asyncio.create_task(self._keep_running(n), name=f"supervise-{n}") for n in self.names]
        await stop.wait()
        self._stopping.set()
        for proc in self._procs.values():
            _terminate(proc)
        done, pending = await asyncio.wait(tasks, timeout=self.stop_timeout_s)
        if pending:
            for name, proc in self._procs.items():
                if proc.returncode is None:
                    log.warning("service %s did not stop in %.0f s; killing it", name, self.stop_timeout_s)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.wait(pending, timeout=5)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.error("supervising failed", exc_info=t.exception())
        return 0


def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)


async def run_processes(settings: InstanceSettings, names: Sequence[str]) -> int:
    """Run each service in a supervised child process until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    remove = install_stop_signals(stop)
    try:
        return await Supervisor(settings, names).run(stop)
    finally:
        remove()
        flush_telemetry()
