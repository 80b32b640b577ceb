"""``lifeline demo``: a whole city instance on one machine, fed by the sensor simulator.

Starts a nats-server (JetStream + MQTT) and the dev OpenID provider as child processes, the city
instance of Hefei (340100) in single-process mode, imports the sample census of Hefei into its assets
service (ingest's sensor registry follows assets, so the census is the one list of sensors), waits until
ingest knows the census's sensors, then starts the simulator on those same sensors (a short backfill,
then live, with a gas leak and a water-main burst a few minutes in). Prints where to look, then a progress line every
~10 s. Later services join by being registered in :mod:`lifeline.launcher.instance` (the city tier runs
every service that exists) and, optionally, by a demo section here (``DEMO_SETTINGS``, ``PANELS``,
``PROGRESS``).

With ``--speed N`` > 1 the simulation starts ``REPLAY_S`` in the past and replays it N× faster until it
has caught up with the wall clock, then follows it: ingest refuses readings from the future.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

import httpx

from lifeline.kit.auth import ClientCredentials
from lifeline.kit.catalogue import SensorSpec, load_quantities
from lifeline.kit.config import InstanceSettings, Tier
from lifeline.kit.devidp import DevIdp, DevIdpUnavailable
from lifeline.kit.natsserver import NatsServer, free_port
from lifeline.kit.runtime import Service
from lifeline.kit.tasks import cancel_and_wait
from lifeline.kit.telemetry import JsonLogFormatter, flush_telemetry, setup_telemetry

from .census import load_census, packaged_dir, read_census
from .instance import Instance, install_stop_signals, load_service, services_for
from .simulator import (
    GasLeak,
    Simulator,
    SimulatorStats,
    WaterBurst,
    run_simulator,
    sample_sensors,
)

log = logging.getLogger("lifeline.launcher.demo")

REGION = "340100"
REGION_NAME = "合肥市"
# Fixed ports are easy to remember and paste; dev machines often run their own NATS on 4222 and an MQTT
# broker on 1883, hence the 1xxxx ones. Any that is taken falls back to a free port.
NATS_PORT = 14222
MQTT_PORT = 11883
NATS_MONITOR_PORT = 18222
IDP_PORT = 8180
# The instance's service account in the dev provider (deploy/dev-idp/realm.json): ingest reads assets'
# sensors with it, and the demo loads the census and reads progress with it.
SERVICES_CLIENT = ("lifeline-services", "dev-secret")
SIMULATOR_CLIENT = ("simulator", "dev-secret")
OPERATOR_CLIENT = ("operator-340100", "dev-secret")
PARTNER_CLIENT = ("partner-340100", "dev-secret")
GAS_LEAK_AT_S = 180.0
BURST_AT_S = 420.0
REPLAY_S = 1800.0
PROGRESS_EVERY_S = 10.0
# How long ingest may take to learn the census's sensors from the census assets keeps on the bus.
REGISTRY_WAIT_S = 30.0
CST = timezone(timedelta(hours=8))


@dataclass
class DemoOptions:
    data_dir: Path = Path("var/demo")
    speed: float = 1.0
    duration: float | None = None
    fresh: bool = False
    backfill_hours: float = 2.0
    seed: int = 340100
    # Free ports everywhere instead of the memorable fixed ones (tests, a second demo beside the first).
    free_ports: bool = False


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens there, else a free port (also for ``preferred`` 0)."""
    if not preferred:
        return free_port(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers do: connections of the previous run in TIME_WAIT must not count as "taken".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, preferred))
        except OSError:
            return free_port(host)
    return preferred


def catch_up_clock(speed: float, lead_s: float) -> Callable[[], float]:
    """A clock for ``run_simulator``: device time runs ``speed``× until it reaches the wall clock.

    The simulator's device time is ``start + elapsed × speed``; with ``start = now − lead_s`` this clock
    returns ``min(wall, (lead_s + wall) / speed)`` so device time never passes the wall clock.
    """
    t0 = time.monotonic()

    def clock() -> float:
        wall = time.monotonic() - t0
        return min(wall, (lead_s + wall) / speed) if speed > 1 else wall

    return clock


# ───────────────────────────────────── per-service demo parts ─────────────────────────────────────


@dataclass
class Demo:
    """Everything the demo started, for the panels and progress lines."""

    opts: DemoOptions
    data_dir: Path
    nats: NatsServer
    idp: DevIdp
    instance_settings: InstanceSettings
    instance: Instance | None = None
    sim: Simulator | None = None
    clock: Callable[[], float] | None = None
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    accepted: int = 0
    open_alerts: int = 0
    # Alert events printed as they came (the live feed's ids): the test and the final line count them.
    alert_events: Counter[str] = field(default_factory=Counter)
    # Why ingest refused simulated readings, by reason (the simulator sends a few out of range on purpose).
    refusals: Counter[str] = field(default_factory=Counter)

    def service(self, name: str) -> Service | None:
        return self.instance.services.get(name) if self.instance else None

    def http_url(self, name: str) -> str:
        svc = self.service(name)
        assert svc is not None and svc.http is not None
        return svc.http.url

    def sim_now_ms(self) -> int | None:
        if self.sim is None or self.clock is None:
            return None
        return self.sim.sim_time(self.clock())


# Settings the demo gives a service on top of ports (keyword arguments of its settings class). None so far:
# ingest's sensor registry follows assets by default, which the demo fills from the census.
DEMO_SETTINGS: dict[str, Callable[[Demo], dict[str, Any]]] = {}


def _gas_sensor(demo: Demo) -> str:
    """The CH4 sensor the gas leak is scripted at (what the try-it commands point to)."""
    gas = demo.sim.incidents.get("gas_leak") if demo.sim else None
    return gas.primary if gas else "HF-GS-CH4-001"


def _service_panel(svc: Service, title: str, *, api: str, grpc_note: str = "", more: Sequence[str] = ()) -> list[str]:
    """The lines every service's section has (API, docs, gRPC, metrics, readiness), and its own ``more``."""
    assert svc.http is not None
    base = svc.http.url
    grpc_addr = svc.grpc.address if svc.grpc else "—"
    return [
        title,
        f"  REST 接口 API          {base}{api}",
        f"  接口文档 OpenAPI docs   {base}/docs",
        f"  gRPC（已开启反射 reflection on）  {grpc_addr}{grpc_note}",
        *more,
        f"  指标 Metrics            {base}/metrics",
        f"  就绪 Readiness          {base}/readyz",
    ]


def _ingest_panel(demo: Demo, svc: Service) -> list[str]:
    grpc_addr = svc.grpc.address if svc.grpc else "—"
    latest = f'{{"sensor_id":"{_gas_sensor(demo)}"}}'
    return _service_panel(
        svc,
        "接入服务 ingest（读数校验、去重、存储、最新值、离线检测 / readings, latest values, no-data tracking）",
        api="/v1",
        more=[
            f"      grpcurl -plaintext {grpc_addr} list",
            f"      grpcurl -plaintext -H \"authorization: Bearer $TOKEN\" -d '{latest}' \\",
            f"          {grpc_addr} lifeline.v1.TelemetryQuery/GetLatest",
        ],
    )


def _assets_panel(demo: Demo, svc: Service) -> list[str]:
    return _service_panel(
        svc,
        "资产普查 assets（设施、传感器、管网拓扑、风险源 / facilities, sensors, network topology, risk sources）",
        api="/v1   (/facilities /sensors /units /links /risks)",
    )


def _alerts_panel(demo: Demo, svc: Service) -> list[str]:
    assert svc.http is not None
    return _service_panel(
        svc,
        "预警服务 alerts（四级预警、处置流程、静默与抑制 / four-level warnings, the handling workflow, silences,"
        " inhibition）",
        api="/v1/alerts   (/rules /silences /webhooks)",
        grpc_note="   lifeline.v1.AlertService/Watch",
        more=[f"  实时推送 live (SSE)     {svc.http.url}/v1/alerts/stream"],
    )


def _ingest_try_it(demo: Demo, svc: Service) -> list[str]:
    assert svc.http is not None
    base = svc.http.url
    gas_sensor = _gas_sensor(demo)
    return [
        "  # 燃气监测点最新值 / latest value of a gas (CH4) sensor — the gas leak is scripted there",
        f'  curl -s -H "Authorization: Bearer $TOKEN" {base}/v1/sensors/{gas_sensor}/latest',
        "  # 它最近 15 分钟的读数 / its readings of the last 15 minutes",
        '  curl -s -H "Authorization: Bearer $TOKEN" \\',
        f'      "{base}/v1/sensors/{gas_sensor}/readings?from=$(( ($(date +%s) - 900) * 1000 ))"',
        "  # 离线传感器 / sensors that went offline (also: online, never_seen; no state: all)",
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{base}/v1/sensors/status?state=offline"',
    ]


def _assets_try_it(demo: Demo, svc: Service) -> list[str]:
    assert svc.http is not None
    return [
        "  # 燃气设施 / gas facilities of the census (a page; next_page_token for more)",
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{svc.http.url}/v1/facilities?kind=gas&limit=5"',
    ]


def _alerts_try_it(demo: Demo, svc: Service) -> list[str]:
    assert svc.http is not None
    base = svc.http.url
    return [
        "  # 未关闭的预警（I 红 … IV 蓝）/ open alerts (I red … IV blue), newest first",
        f'  curl -s -H "Authorization: Bearer $TOKEN" "{base}/v1/alerts?limit=20"',
        "  # 实时跟随预警事件 / follow alert events live (Server-Sent Events)",
        f'  curl -sN -H "Authorization: Bearer $TOKEN" {base}/v1/alerts/stream',
        f"  # 处置：开始核实（值班员令牌 operator token: client_id={OPERATOR_CLIENT[0]}）"
        " / handle one: start verifying",
        '  curl -s -X POST -H "Authorization: Bearer $OP_TOKEN" -H "Content-Type: application/json" \\',
        f'      -d \'{{"to_state":"verifying","comment":"现场核实"}}\' {base}/v1/alerts/<id>/transitions',
    ]


PANELS: dict[str, Callable[[Demo, Service], list[str]]] = {
    "assets": _assets_panel,
    "ingest": _ingest_panel,
    "alerts": _alerts_panel,
}
TRY_IT: dict[str, Callable[[Demo, Service], list[str]]] = {
    "assets": _assets_try_it,
    "ingest": _ingest_try_it,
    "alerts": _alerts_try_it,
}


def _metric_sum(text: str, name: str, label: str | None = None) -> float:
    """Sum of the samples of ``name`` in Prometheus text (optionally only those carrying ``label``)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        if label is not None and label not in line:
            continue
        with contextlib.suppress(ValueError, IndexError):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _ingest_progress(demo: Demo, svc: Service, http: httpx.AsyncClient, token: str) -> str:
    assert svc.http is not None
    base = svc.http.url
    metrics = (await http.get(f"{base}/metrics")).text
    demo.accepted = int(_metric_sum(metrics, "lifeline_ingest_readings_total", 'outcome="accepted"'))
    duplicates = int(_metric_sum(metrics, "lifeline_ingest_readings_total", 'outcome="duplicate'))
    rejected = int(_metric_sum(metrics, "lifeline_ingest_readings_total", 'outcome="rejected'))
    demo.stored = int(_metric_sum(metrics, "lifeline_ingest_persisted_readings_total"))
    resp = await http.get(
        f"{base}/v1/sensors/status", params={"limit": 10000}, headers={"Authorization": f"Bearer {token}"}
    )
    states: dict[str, int] = {}
    if resp.is_success:
        for s in resp.json().get("sensors", []):
            states[s["state"]] = states.get(s["state"], 0) + 1
    line = (
        f"读数 readings: 接收 accepted {demo.accepted:,} · 入库 stored {demo.stored:,}"
        f" · 重复 dup {duplicates:,} · 拒收 rejected {rejected:,}"
        f" | 传感器 sensors: 在线 online {states.get('online', 0)}"
        f" · 离线 offline {states.get('offline', 0)} · 未上报 never {states.get('never_seen', 0)}"
    )
    # The sensor each running incident starts at, as stored: the numbers a user is watching for.
    now = demo.sim_now_ms()
    watched = []
    if demo.sim is not None and now is not None:
        for inc in demo.sim.incidents.values():
            if inc.active(now):
                latest = await http.get(
                    f"{base}/v1/sensors/{inc.primary}/latest", headers={"Authorization": f"Bearer {token}"}
                )
                if latest.is_success:
                    r = latest.json()["reading"]
                    watched.append(f"{inc.primary} {r['value']:g} {r['unit']}")
    if watched:
        line += " | " + " · ".join(watched)
    return line


async def _alerts_progress(demo: Demo, svc: Service, http: httpx.AsyncClient, token: str) -> str:
    assert svc.http is not None
    resp = await http.get(
        f"{svc.http.url}/v1/alerts", params={"limit": 1000}, headers={"Authorization": f"Bearer {token}"}
    )
    resp.raise_for_status()
    alerts = resp.json()["alerts"]
    by_level = Counter(a["level"] for a in alerts)
    demo.open_alerts = len(alerts)
    levels = " · ".join(f"{lv} {by_level.get(lv, 0)}" for lv in ("I", "II", "III", "IV"))
    line = f"预警 alerts: 未关闭 open {len(alerts)} ({levels})"
    overdue = sum(1 for a in alerts if a["overdue"])
    suppressed = sum(1 for a in alerts if a["suppressed"])
    if overdue:
        line += f" · 超时 overdue {overdue}"
    if suppressed:
        line += f" · 已抑制 suppressed {suppressed}"
    return line


PROGRESS: dict[str, Callable[[Demo, Service, httpx.AsyncClient, str], Awaitable[str]]] = {
    "ingest": _ingest_progress,
    "alerts": _alerts_progress,
}

INCIDENT_NAMES = {"gas_leak": "燃气泄漏 gas leak", "water_burst": "供水爆管 water-main burst"}


# ─────────────────────────────────────────── the panel ───────────────────────────────────────────


def _cst(ms: int, fmt: str = "%H:%M:%S") -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(CST).strftime(fmt)


def panel(demo: Demo) -> str:
    """The "where to look" text, in Chinese with English."""
    idp, nats, s = demo.idp, demo.nats, demo.instance_settings
    bar = "═" * 96
    lines = [
        bar,
        f" Lifeline 城市生命线安全工程 演示 demo — {REGION_NAME} Hefei ({REGION})"
        " · 城市级 city tier · 单进程 single process",
        bar,
        f"数据目录 Data dir        {demo.data_dir}   (--fresh 清空重来 / start from scratch)",
        f"日志 Logs                {demo.data_dir / 'logs' / 'lifeline.log'}",
        "",
    ]
    assert demo.instance is not None
    for name, svc in demo.instance.services.items():
        section = PANELS.get(name)
        lines += section(demo, svc) if section else [f"{name}: {svc.http.url if svc.http else ''}"]
        lines.append("")
    lines += [
        f"消息总线 NATS JetStream   {nats.url}   (监控 monitoring http://{nats.host}:{nats.monitor_port})",
        f"MQTT 设备接入 devices     {nats.mqtt_url}   主题 topic devices/{REGION}/<client>/readings",
        f"      mosquitto_pub -h {nats.host} -p {nats.mqtt_port} -q 1 -t devices/{REGION}/my-device/readings \\",
        r'          -m "{\"readings\":[{\"sensor_id\":\"HF-GS-CH4-001\",\"time\":\"$(date -Iseconds)\",'
        r'\"value\":0.4,\"unit\":\"%LEL\"}]}"',
        f"      结果 results: mosquitto_sub -h {nats.host} -p {nats.mqtt_port} -t 'devices/{REGION}/my-device/results'",
        "",
        f"身份认证 OIDC issuer      {s.oidc_issuer}",
        "  取令牌 get a token (client credentials; 其他客户端 other clients: deploy/dev-idp/realm.json,"
        " 密钥 secret dev-secret):",
        f"  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id={PARTNER_CLIENT[0]} "
        f"-d client_secret={PARTNER_CLIENT[1]} \\",
        f"      {idp.token_endpoint()} \\",
        "      | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        "",
        "试一试 Try it:",
    ]
    for name, svc in demo.instance.services.items():
        if name in TRY_IT:
            lines += TRY_IT[name](demo, svc)
    if demo.sim is not None:
        sim = demo.sim
        lines += ["", f"剧本 Scenario (模拟时间 simulated time, UTC+8; 速度 speed ×{sim.speed:g}):"]
        if demo.opts.backfill_hours > 0:
            begin = sim.start_ms - int(demo.opts.backfill_hours * 3_600_000)
            lines.append(f"  历史回填 backfill       {_cst(begin, '%m-%d %H:%M')} → {_cst(sim.start_ms, '%H:%M')}")
        for kind, inc in sim.incidents.items():
            others = [k for k in inc.affected if k != inc.primary]
            more = f" (+{len(others)} 相关 related: {', '.join(others[:3])}{'…' if len(others) > 3 else ''})"
            lines.append(f"  {INCIDENT_NAMES.get(kind, kind):<22} {_cst(inc.start_ms)} 起 from  {inc.primary}{more}")
        if sim.speed > 1:
            lines.append(
                f"  以 ×{sim.speed:g} 重放最近 {REPLAY_S / 60:.0f} 分钟，追上当前时间后实时运行"
                f" / replays the last {REPLAY_S / 60:.0f} min ×{sim.speed:g}, then live"
            )
    lines += ["", "每约 10 秒一行进度 / a progress line every ~10 s.  按 Ctrl-C 停止 / press Ctrl-C to stop.", bar]
    return "\n".join(lines)


# ─────────────────────────────────────────── running ───────────────────────────────────────────


def _demo_logging(log_file: Path, console_level: int = logging.WARNING) -> None:
    """Full JSON logs go to a file; the console keeps the panel, progress lines and warnings."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    _console_level(console_level)
    fh = logging.FileHandler(log_file, encoding="utf-8")
    fh.setFormatter(JsonLogFormatter())
    fh.setLevel(logging.INFO)
    root.addHandler(fh)
    root.setLevel(logging.INFO)


def _console_level(level: int) -> None:
    for h in logging.getLogger().handlers:
        if getattr(h, "_lifeline_handler", False):
            h.setLevel(level)


def _clear(data_dir: Path, out: TextIO) -> None:
    if data_dir.exists():
        print(f"--fresh: 删除 removing {data_dir}", file=out)
        shutil.rmtree(data_dir)


async def _progress_line(demo: Demo, http: httpx.AsyncClient, token_source: ClientCredentials) -> str:
    elapsed = int(time.monotonic() - demo.started)
    head = f"[{elapsed // 60:02d}:{elapsed % 60:02d}]"
    now = demo.sim_now_ms()
    if now is not None and demo.sim is not None:
        head += f" 模拟时间 sim {_cst(now)}"
        active = [INCIDENT_NAMES.get(k, k) for k, inc in demo.sim.incidents.items() if inc.active(now)]
        if active:
            head += " ⚠ " + ", ".join(active)
    parts = [head]
    assert demo.instance is not None
    try:
        token = await token_source.token()
        for name, svc in demo.instance.services.items():
            if name in PROGRESS:
                parts.append(await PROGRESS[name](demo, svc, http, token))
    except Exception as exc:
        parts.append(f"(进度查询失败 progress query failed: {exc!r})")
    return " | ".join(parts)


async def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo until Ctrl-C/SIGTERM or ``opts.duration``; see the module docstring."""
    started = time.monotonic()
    stop = asyncio.Event()
    remove_signals = install_stop_signals(stop)
    data_dir = opts.data_dir.resolve()
    if opts.fresh:
        _clear(data_dir, out)
    data_dir.mkdir(parents=True, exist_ok=True)

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    def port(preferred: int) -> int:
        return port_or_free(0 if opts.free_ports else preferred)

    nats = NatsServer(
        new_session=True,
        store_dir=data_dir / "nats",
        port=port(NATS_PORT),
        mqtt_port=port(MQTT_PORT),
        monitor_port=port(NATS_MONITOR_PORT),
    )
    idp = DevIdp(port=0 if opts.free_ports else port_or_free(IDP_PORT), log_file=data_dir / "logs" / "dev-idp.log")
    demo: Demo | None = None
    sim_task: asyncio.Task[SimulatorStats] | None = None
    sim_stop = asyncio.Event()
    sim_http: httpx.AsyncClient | None = None
    alerts_task: asyncio.Task[None] | None = None
    creds: list[ClientCredentials] = []
    rc = 0
    try:
        say(f"启动 starting nats-server (JetStream, MQTT) on {nats.url} …")
        await asyncio.to_thread(nats.start)
        _check(stop)
        say(f"启动 starting the dev identity provider (node deploy/dev-idp) on port {idp.port or '(free)'} …")
        await asyncio.to_thread(idp.start)
        _check(stop)
        settings = InstanceSettings(
            tier=Tier.CITY,
            region=REGION,
            region_name=REGION_NAME,
            data_dir=data_dir / f"city-{REGION}",
            nats_url=nats.url,
            oidc_issuer=idp.issuer(),
            oidc_client_id=SERVICES_CLIENT[0],
            oidc_client_secret=SERVICES_CLIENT[1],
            log_json=False,
        )
        setup_telemetry(settings)
        _demo_logging(data_dir / "logs" / "lifeline.log")
        demo = Demo(opts=opts, data_dir=data_dir, nats=nats, idp=idp, instance_settings=settings, started=started)
        names = services_for("all", Tier.CITY)
        overrides = {name: _service_overrides(name, demo) for name in names}
        if "assets" in overrides and "ingest" in overrides:
            # Coverage asks ingest when sensors last reported; ports are chosen here, so the demo wires it.
            overrides["assets"]["ingest_grpc"] = f"127.0.0.1:{overrides['ingest']['grpc_port']}"
        say(f"启动 starting city instance {REGION} ({', '.join(names)}) …")
        demo.instance = Instance(settings, names, overrides)
        await demo.instance.start()
        _check(stop)
        reader_creds = ClientCredentials(settings.oidc_issuer, *SERVICES_CLIENT)
        creds.append(reader_creds)
        await _load_census(demo, reader_creds, say)
        _check(stop)

        catalogue = load_quantities(None)
        lead_s = REPLAY_S if opts.speed > 1 else 0.0
        sensors = sample_sensors(catalogue)
        sim = Simulator(
            sensors,
            catalogue,
            opts.seed,
            int(time.time() * 1000 - lead_s * 1000),
            opts.speed,
            gas_leak=GasLeak(start_s=GAS_LEAK_AT_S),
            water_burst=burst_along_the_network(sensors, read_census(packaged_dir(), REGION)["links"]),
        )
        demo.sim = sim
        demo.clock = catch_up_clock(opts.speed, lead_s)
        say()
        say(panel(demo))
        say()

        if demo.service("alerts") is not None:
            alerts_task = asyncio.create_task(_follow_alerts(demo, reader_creds, say, catalogue), name="alerts-feed")
        sim_creds = ClientCredentials(settings.oidc_issuer, *SIMULATOR_CLIENT)
        creds.append(sim_creds)
        sim_http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0), event_hooks={"response": [_refusal_counter(demo.refusals)]}
        )
        sim_task = asyncio.create_task(
            run_simulator(
                demo.http_url("ingest"),
                sim_creds.token,
                sim,
                client=sim_http,
                stop_event=sim_stop,
                backfill_hours=opts.backfill_hours,
                clock=demo.clock,
            ),
            name="simulator",
        )
        rc = await _watch(demo, opts, stop, sim_task, reader_creds, say)
    except _Interrupted:
        rc = 0
    except DevIdpUnavailable as exc:
        say(f"演示无法启动 the demo cannot start: {exc}")
        rc = 1
    except Exception as exc:
        log.exception("demo failed")
        say(f"演示失败 demo failed: {exc}")
        rc = 1
    finally:
        say("停止中 stopping …")
        # The file log keeps everything; the console need not show the bus going away as it closes.
        _console_level(logging.ERROR)
        sim_stop.set()
        if sim_task is not None:
            with contextlib.suppress(Exception):
                stats = await asyncio.wait_for(sim_task, 15)
                say(
                    f"模拟器 simulator: 发送 sent {stats.sent:,} · 接收 accepted {stats.accepted:,}"
                    f" · 重复 duplicates {stats.duplicates:,} · 拒收 rejected {stats.rejected:,}"
                    f"{_reasons(demo.refusals) if demo else ''} · 重试 retries {stats.retries:,}"
                )
        if alerts_task is not None:
            with contextlib.suppress(Exception):
                await cancel_and_wait(alerts_task)
            assert demo is not None
            events = " · ".join(f"{KIND_NAMES.get(k, k)} {n}" for k, n in demo.alert_events.items()) or "—"
            say(f"预警事件 alert events: {events} | 未关闭 open {demo.open_alerts}")
        if sim_http is not None:
            with contextlib.suppress(Exception):
                await sim_http.aclose()
        if demo is not None and demo.instance is not None:
            await demo.instance.stop()
        for c in creds:
            with contextlib.suppress(Exception):
                await c.aclose()
        await asyncio.to_thread(idp.stop)
        await asyncio.to_thread(nats.stop)
        flush_telemetry()
        remove_signals()
        say("已停止 stopped.")
    return rc


def _refusal_counter(refusals: Counter[str]) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx response hook counting the reasons ingest gives for refusing readings."""

    async def hook(resp: httpx.Response) -> None:
        if resp.request.method != "POST" or resp.status_code != 200:
            return
        await resp.aread()
        with contextlib.suppress(ValueError, AttributeError):
            for result in resp.json().get("results", []):
                if result.get("status") == "rejected":
                    refusals[result.get("reason") or "?"] += 1

    return hook


def _reasons(refusals: Counter[str]) -> str:
    if not refusals:
        return ""
    return " (原因 reasons: " + ", ".join(f"{reason} {n:,}" for reason, n in refusals.most_common()) + ")"


class _Interrupted(Exception):
    """Ctrl-C/SIGTERM while starting up."""


def _check(stop: asyncio.Event) -> None:
    if stop.is_set():
        raise _Interrupted


async def _load_census(demo: Demo, creds: ClientCredentials, say: Callable[[str], None]) -> None:
    """The sample census into the city's assets service, then wait until ingest knows its sensors.

    Before the simulator, so that its first readings are for sensors ingest knows. Idempotent: a restart
    imports the same files and changes nothing."""
    assert demo.instance is not None
    if "assets" not in demo.instance.services:
        return
    say(f"载入普查数据 loading the sample census of {REGION_NAME} into assets (bulk import) …")
    started = time.monotonic()
    stats = await load_census(demo.http_url("assets"), creds.authorization, packaged_dir(), REGION)
    say(f"普查数据已载入 sample census loaded in {time.monotonic() - started:.1f} s: {stats.summary()}")
    if "ingest" not in demo.instance.services:
        return
    sensors = {s["sensor_id"] for s in read_census(packaged_dir(), REGION)["sensors"]}
    say(f"等待接入服务从 assets 同步 {len(sensors)} 个传感器 waiting for ingest's sensor registry (from assets) …")
    started = time.monotonic()
    known = await _ingest_knows(demo.http_url("ingest"), creds, sensors, REGISTRY_WAIT_S)
    if known < len(sensors):
        raise RuntimeError(
            f"接入服务仅同步了 {known}/{len(sensors)} 个传感器 ingest knows only {known} of the census's"
            f" {len(sensors)} sensors after {REGISTRY_WAIT_S:.0f} s"
        )
    say(f"接入服务已同步传感器 ingest knows all {known} sensors ({time.monotonic() - started:.1f} s)")


async def _ingest_knows(base: str, creds: ClientCredentials, sensors: set[str], within_s: float) -> int:
    """How many of ``sensors`` ingest's registry holds, polled until all or ``within_s`` is up."""
    deadline = time.monotonic() + within_s
    known = 0
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while True:
            # Every sensor its registry holds: none before the census on the bus is read, then the census's.
            resp = await http.get(
                "/v1/sensors/status", params={"limit": 10000}, headers={"Authorization": await creds.authorization()}
            )
            if resp.is_success:
                known = len(sensors & {s["sensor_id"] for s in resp.json()["sensors"]})
            if known == len(sensors) or time.monotonic() >= deadline:
                return known
            await asyncio.sleep(0.2)


def _service_overrides(name: str, demo: Demo) -> dict[str, Any]:
    fields = load_service(name).settings_cls.model_fields
    out: dict[str, Any] = {}
    for key in ("http_port", "grpc_port"):
        default = fields[key].default if key in fields and not demo.opts.free_ports else 0
        out[key] = port_or_free(default)  # a free one for 0: peers are told the port before it is bound
    extra = DEMO_SETTINGS.get(name)
    if extra is not None:
        out.update(extra(demo))
    return out


async def _watch(
    demo: Demo,
    opts: DemoOptions,
    stop: asyncio.Event,
    sim_task: asyncio.Task[SimulatorStats],
    reader: ClientCredentials,
    say: Callable[[str], None],
) -> int:
    """Print progress until stopped; with a duration, 0 only if readings were stored."""
    # --duration counts from the demo's start, start-up included: the run's length is predictable.
    deadline = demo.started + opts.duration if opts.duration else None
    announced: set[str] = set()
    async with httpx.AsyncClient(timeout=10) as http:
        next_line = demo.started + PROGRESS_EVERY_S
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if sim_task.done() and sim_task.exception() is not None:
                say(f"模拟器出错退出 the simulator failed: {sim_task.exception()!r}")
                return 1
            wake = min(next_line, deadline) if deadline is not None else next_line
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, min(wake - now, 1.0)))
            _announce_incidents(demo, announced, say)
            if time.monotonic() >= next_line:
                while next_line <= time.monotonic():
                    next_line += PROGRESS_EVERY_S
                say(await _progress_line(demo, http, reader))
        if next_line - time.monotonic() < PROGRESS_EVERY_S - 2:
            say(await _progress_line(demo, http, reader))  # the final figures, unless just printed
        else:
            await _progress_line(demo, http, reader)  # still refresh demo.stored for the exit code
    if opts.duration and demo.stored <= 0:
        say(f"没有读数入库 no readings were stored; see {demo.data_dir / 'logs' / 'lifeline.log'}")
        return 1
    return 0


def burst_along_the_network(sensors: dict[str, SensorSpec], links: list[dict[str, Any]], depth: int = 3) -> WaterBurst:
    """The water-main burst on the census's network: the segment with the most monitored segments
    downstream bursts, and the pressure sags on those downstream (the simulator alone knows no network
    and would pick neighbours by distance). Alerts' inhibition then marks the downstream low-pressure
    alerts as suppressed by the burst, as it would in a real city."""
    by_facility = {
        s.facility_code: s.sensor_id for s in sensors.values() if s.quantity == "water.pressure" and s.active
    }
    down: dict[str, list[str]] = {}
    for link in links:
        down.setdefault(link["from_code"], []).append(link["to_code"])

    def downstream(code: str) -> list[str]:
        seen, frontier, found = {code}, [code], []
        for _ in range(depth):
            frontier = [n for c in frontier for n in down.get(c, []) if n not in seen]
            seen.update(frontier)
            found += [by_facility[n] for n in frontier if n in by_facility]
        return found

    if not by_facility:
        return WaterBurst(start_s=BURST_AT_S)
    primary = min(by_facility, key=lambda code: (-len(downstream(code)), by_facility[code]))
    neighbours = downstream(primary)[:4]
    if not neighbours:
        return WaterBurst(start_s=BURST_AT_S)
    # Segments of a main lie kilometres apart: a radius that far lets the sag reach them (10–25 %).
    return WaterBurst(
        start_s=BURST_AT_S, pressure_sensor=by_facility[primary], neighbours=tuple(neighbours), radius_m=8000.0
    )


def _announce_incidents(demo: Demo, announced: set[str], say: Callable[[str], None]) -> None:
    now = demo.sim_now_ms()
    if now is None or demo.sim is None:
        return
    for kind, inc in demo.sim.incidents.items():
        if kind not in announced and inc.start_ms <= now:
            announced.add(kind)
            say(
                f"▶ {INCIDENT_NAMES.get(kind, kind)} 开始 started ({_cst(inc.start_ms)}) at {inc.primary}"
                f" — curl …/v1/sensors/{inc.primary}/latest"
            )


# ─────────────────────────────────────────── live alerts ───────────────────────────────────────────

LEVEL_NAMES = {"I": "I 级 红 red", "II": "II 级 橙 orange", "III": "III 级 黄 yellow", "IV": "IV 级 蓝 blue"}
# What the console shows as it happens; people's transitions show in the progress counts instead.
FOLLOWED_KINDS = ("raised", "level_changed", "cleared", "overdue")
KIND_NAMES = {
    "raised": "🚨 预警 alert raised",
    "level_changed": "↕ 预警级别变化 level changed",
    "cleared": "✓ 预警解除 condition cleared",
    "overdue": "⏰ 处置超时 overdue",
}
_LEVEL_RE = re.compile(r"WARNING_LEVEL_([IV]+)_")


def alert_event_line(body: dict[str, Any], catalogue: Any = None) -> str:
    """One console line for an alert event as the SSE stream delivers it (webhooks get the same body)."""
    kind = body.get("kind", "")
    alert = body.get("event", {}).get("alert", {})
    m = _LEVEL_RE.match(alert.get("level", ""))
    level = LEVEL_NAMES.get(m.group(1), m.group(1)) if m else "?"
    quantity = alert.get("quantity", "")
    what = quantity
    unit = ""
    with contextlib.suppress(Exception):
        q = catalogue.get(quantity)
        what, unit = f"{q.names.get('zh-CN', quantity)} / {q.names.get('en', quantity)}", q.unit
    # No-data (and composite) alerts compare no measure of one reading: they have no value to show.
    measure = alert.get("measure", "").removeprefix("RULE_MEASURE_").lower()
    value = float(alert.get("last_value", 0.0))
    if not measure:
        shown = "无数据 no data" if alert.get("rule_id") == "no_data" else alert.get("rule_id", "")
    elif measure == "value":
        shown = f"{value:g} {unit}".rstrip()
    else:
        shown = f"{measure} {value:g}"
    line = f"{KIND_NAMES.get(kind, kind)} · {level} · {alert.get('sensor_id', '?')} {what}: {shown}"
    if alert.get("suppressed"):
        line += f" · 已抑制 suppressed ({alert.get('suppressed_by', '')})"
    return line + f" — …/v1/alerts/{body.get('alert_id', '')}"


async def _follow_alerts(
    demo: Demo, reader: ClientCredentials, say: Callable[[str], None], catalogue: Any = None
) -> None:
    """Print alert events as the alerts service streams them (SSE), resuming after the last one seen."""
    base = demo.http_url("alerts")
    last_id: str | None = None
    params = [("kind", k) for k in FOLLOWED_KINDS]
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http:
        while True:
            try:
                headers = {"Authorization": f"Bearer {await reader.token()}"}
                if last_id:
                    headers["Last-Event-ID"] = last_id
                async with http.stream("GET", f"{base}/v1/alerts/stream", params=params, headers=headers) as resp:
                    resp.raise_for_status()
                    async for line in resp.aiter_lines():
                        if line.startswith("id: "):
                            last_id = line[4:]
                        elif line.startswith("data: "):
                            body = json.loads(line[6:])
                            demo.alert_events[body.get("kind", "")] += 1
                            say(alert_event_line(body, catalogue))
            except Exception as exc:
                # The stream ends when the service restarts or this follower falls behind, a token may not
                # come while the identity provider restarts: whatever it was, follow again (cancellation,
                # at the demo's stop, is not an Exception and ends the task).
                log.info("alert stream interrupted: %r; following again", exc)
            await asyncio.sleep(1.0)
