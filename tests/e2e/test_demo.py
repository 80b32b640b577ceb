"""Smoke test of `lifeline demo`: NATS, the dev identity provider, the city instance and the simulator
run together as a user would start them; the census goes into assets first, ingest learns its sensors from
assets, and the simulator's readings are accepted (none refused) and stored."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from lifeline.kit.devidp import find_dev_idp_dir
from lifeline.launcher.census import packaged_dir, read_census
from lifeline.launcher.demo import burst_along_the_network
from lifeline.launcher.simulator import sample_sensors

LIFELINE = Path(sys.executable).parent / "lifeline"


def _needs_dev_idp() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js (`node`) is not installed; the demo's identity provider needs it")
    idp_dir = find_dev_idp_dir()
    if idp_dir is None or not (idp_dir / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("deploy/dev-idp/node_modules is missing; run `make bootstrap`")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_runs_and_stores_readings(tmp_path: Path) -> None:
    _needs_dev_idp()
    data_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    proc = subprocess.run(
        [
            str(LIFELINE),
            "demo",
            "--duration",
            "55",
            "--data-dir",
            str(data_dir),
            "--speed",
            # ×30: the gas leak (+3 simulated minutes) reaches alert level IV and escalates within the run.
            "30",
            "--backfill-hours",
            "0.5",
            # Never the demo's fixed ports in tests: other workers and developers may use them.
            "--free-ports",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"

    # The panel tells where to look.
    for needle in (
        "/docs",
        "/metrics",
        "/readyz",
        "reflection",
        "devices/340100/<client>/readings",
        "TOKEN=$(curl",
        "/v1/alerts/stream",
        "lifeline.v1.AlertService/Watch",
        "/v1/facilities",
    ):
        assert needle in out, needle
    issuer = re.search(r"OIDC issuer\s+(\S+)", out)
    assert issuer and issuer.group(1).endswith("/realms/lifeline")

    # The census is imported into assets and ingest knows all its sensors before the simulator starts.
    census = read_census(packaged_dir(), "340100")
    lines = out.splitlines()
    loaded = next(i for i, line in enumerate(lines) if "普查数据已载入 sample census loaded" in line)
    created = re.search(r"sensors (\d+)/(\d+)/(\d+)", lines[loaded])
    assert created and int(created.group(1)) == len(census["sensors"]), lines[loaded]
    synced = next(i for i, line in enumerate(lines) if "接入服务已同步传感器 ingest knows all" in line)
    assert f"knows all {len(census['sensors'])} sensors" in lines[synced]
    assert loaded < synced < next(i for i, line in enumerate(lines) if line.startswith("剧本 Scenario"))

    # Progress lines: readings accepted and stored grow, sensors come online.
    progress = [line for line in out.splitlines() if "入库 stored" in line and line.startswith("[")]
    assert len(progress) >= 3, out[-4000:]
    stored = [int(m.group(1).replace(",", "")) for m in (re.search(r"stored ([\d,]+)", p) for p in progress) if m]
    assert stored[-1] > 0 and stored[-1] >= stored[0]
    online = re.search(r"在线 online (\d+)", progress[-1])
    assert online and int(online.group(1)) > 100
    # Ingest's registry (from assets) holds every census sensor, the simulator's sensors among them.
    states = re.search(r"在线 online (\d+) · 离线 offline (\d+) · 未上报 never (\d+)", progress[-1])
    assert states and sum(int(n) for n in states.groups()) == len(census["sensors"]), progress[-1]
    # Readings are accepted; the few refused are the ones the simulator sends out of range on purpose,
    # none for a sensor ingest did not know.
    counts = re.search(r"接收 accepted ([\d,]+) .* 拒收 rejected ([\d,]+)", progress[-1])
    assert counts and int(counts.group(1).replace(",", "")) > 100 * int(counts.group(2).replace(",", "")), counts
    sim = re.search(r"模拟器 simulator: .* 接收 accepted ([\d,]+) .* 拒收 rejected ([\d,]+)(.*)", out)
    assert sim and int(sim.group(1).replace(",", "")) > 0, out[-2000:]
    if sim.group(2) != "0":
        reasons = re.search(r"原因 reasons: ([^)]*)\)", sim.group(3))
        assert reasons and set(re.findall(r"([a-z_]+) [\d,]+", reasons.group(1))) <= {"out_of_range"}, sim.group(0)
    assert "unknown_sensor" not in out
    # Incidents are scripted at +3 and +7 simulated minutes; at ×30 both show within the run.
    leak = re.search(r"燃气泄漏 gas leak 开始 started \(.*\) at (\S+)", out)
    assert leak, out[-4000:]
    # The gas leak's CH4 sensor raises an alert, printed from the alerts service's live feed (SSE) as it
    # happens, and the progress lines count open alerts by level.
    raised = [line for line in lines if line.startswith("🚨 预警 alert raised") and f" {leak.group(1)} " in line]
    assert raised, out[-4000:]
    assert re.search(r"级 .* %LEL — …/v1/alerts/[0-9a-f-]{36}$", raised[0]), raised[0]
    assert any(re.search(r"预警 alerts: 未关闭 open [1-9]", p) for p in progress), progress[-1]
    # The water-main burst on the census's network: the downstream segments' low-pressure alerts are
    # kept and marked as suppressed by the burst's alert (alerts' inhibition along assets' links).
    burst = re.search(
        r"🚨 预警 alert raised · I 级 红 red · (HF-WS-PRESSURE-\d+) .*/v1/alerts/([0-9a-f-]{36})$", out, re.M
    )
    assert burst, out[-4000:]
    assert any("HF-WS-PRESSURE-" in line and f"已抑制 suppressed ({burst.group(2)})" in line for line in lines)
    summary = re.search(r"预警事件 alert events: 🚨 预警 alert raised (\d+)", out)
    assert summary and int(summary.group(1)) >= 1, out[-2000:]
    assert "已停止 stopped." in out

    # Everything it started has stopped (nats-server runs with its config under the data directory),
    # and its data is under the data directory.
    leftovers = [
        p.info for p in psutil.process_iter(["pid", "cmdline"]) if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers
    assert (data_dir / "city-340100" / "ingest.db").is_file()
    assert (data_dir / "nats" / "jetstream").is_dir()
    assert (data_dir / "logs" / "lifeline.log").stat().st_size > 0


def test_the_demo_bursts_a_main_with_monitored_segments_downstream() -> None:
    links = read_census(packaged_dir(), "340100")["links"]
    sensors = sample_sensors()
    burst = burst_along_the_network(sensors, links)
    assert burst.pressure_sensor and burst.neighbours
    down: dict[str, set[str]] = {}
    for link in links:
        down.setdefault(link["from_code"], set()).add(link["to_code"])
    reach, frontier = set(), {sensors[burst.pressure_sensor].facility_code}
    for _ in range(3):
        frontier = {n for f in frontier for n in down.get(f, ())}
        reach |= frontier
    for sid in burst.neighbours:
        assert sensors[sid].quantity == "water.pressure" and sensors[sid].facility_code in reach, sid


def test_an_alert_event_line_says_what_an_operator_needs() -> None:
    from lifeline.alerts.notify.service import event_body
    from lifeline.kit.catalogue import load_quantities
    from lifeline.launcher.demo import alert_event_line
    from lifeline.v1 import alerts_pb2, common_pb2

    def line(kind: int, **alert: object) -> str:
        event = alerts_pb2.AlertEvent(kind=kind, alert=alerts_pb2.Alert(id="a-1", region="340104", **alert))
        return alert_event_line(event_body("alert:a-1:1", event), load_quantities())

    raised = alerts_pb2.ALERT_EVENT_KIND_RAISED
    ch4 = line(
        raised,
        sensor_id="HF-GS-CH4-002",
        quantity="gas.ch4",
        level=common_pb2.WARNING_LEVEL_II_ORANGE,
        measure=alerts_pb2.RULE_MEASURE_VALUE,
        last_value=26.5,
    )
    assert ch4.startswith("🚨 预警 alert raised · II 级 橙 orange · HF-GS-CH4-002 ")
    assert ch4.endswith(": 26.5 %LEL — …/v1/alerts/a-1")
    drop = line(
        alerts_pb2.ALERT_EVENT_KIND_LEVEL_CHANGED,
        sensor_id="HF-WS-PRESSURE-002",
        quantity="water.pressure",
        level=common_pb2.WARNING_LEVEL_III_YELLOW,
        measure=alerts_pb2.RULE_MEASURE_DROP_PCT,
        last_value=23.9,
        suppressed=True,
        suppressed_by="b-7",
    )
    assert "↕" in drop and "III 级 黄 yellow" in drop and "drop_pct 23.9 · 已抑制 suppressed (b-7)" in drop
    # A no-data alert has no reading: it says so instead of showing a value of 0.
    silent = line(
        raised,
        sensor_id="HF-UT-CH4-002",
        quantity="utility_tunnel.ch4",
        rule_id="no_data",
        level=common_pb2.WARNING_LEVEL_IV_BLUE,
    )
    assert ": 无数据 no data — " in silent and " 0 " not in silent
