"""Inhibition along the pipe network: a burst upstream suppresses the low-pressure alerts downstream.

The network is a water main ``up → w0 → w1 → w2`` plus an unrelated main ``x``; every segment has a
pressure sensor with a baseline of 0.40 MPa (water: `for` 120 s, clear 300 s). A 15 % drop raises a
level IV low-pressure alert; a 50 % drop on w0 is a burst (level I), the source of the packaged
``water_pipe_burst`` rule (drop_pct level II or worse; targets 1..10 links downstream).
"""

from __future__ import annotations

import secrets

from lifeline.alerts.app import AlertsApp
from lifeline.alerts.policy import Inhibit, Matcher
from lifeline.alerts.service import AlertsService
from lifeline.alerts.workflow import State
from lifeline.kit.catalogue import Level
from lifeline.v1 import alerts_pb2, assets_pb2

from .helpers import (
    OPERATOR,
    REGION,
    EventReader,
    batch,
    outbox_subjects,
    publish_entries,
    publish_readings,
    wait_until,
)

S = 1000
T0 = 1_760_000_000_000
BASELINE = 0.40
LOW = 0.34  # 15 % below the baseline: level IV
BURST = 0.20  # 50 % below: level I


def water_main(names: list[str]) -> tuple[dict[str, str], dict[str, str], list[tuple[str, bytes]]]:
    """Fresh facility codes and sensor ids for the named segments, and their census events."""
    codes, sensors, events = {}, {}, []
    for name in names:
        serial = f"{secrets.randbelow(10**6):06d}"
        code, sid = f"3401041201{serial}", f"WP-{name}-{serial}"
        codes[name], sensors[name] = code, sid
        fac = assets_pb2.Facility(
            code=code, kind=assets_pb2.FACILITY_KIND_WATER, name="供水干管", region=REGION, version=1
        )
        sensor = assets_pb2.AssetSensor(
            sensor_id=sid,
            facility_code=code,
            quantity="water.pressure",
            region=REGION,
            interval_s=60,
            version=1,
            baseline=BASELINE,
        )
        events += [
            ("facility", assets_pb2.FacilityChanged(change=1, facility=fac).SerializeToString()),
            ("sensor", assets_pb2.SensorChanged(change=1, sensor=sensor).SerializeToString()),
        ]
    return codes, sensors, events


def link(src: str, dst: str, *, version: int = 1, retired: bool = False) -> tuple[str, bytes]:
    ln = assets_pb2.Link(
        id=f"L-{src[-6:]}-{dst[-6:]}",
        from_code=src,
        to_code=dst,
        kind=assets_pb2.LINK_KIND_FLOW,
        region=REGION,
        retired=retired,
        version=version,
    )
    change = assets_pb2.CHANGE_KIND_RETIRED if retired else assets_pb2.CHANGE_KIND_CREATED
    return "link", assets_pb2.LinkChanged(change=change, link=ln).SerializeToString()


def fingerprint(sid: str) -> str:
    return f"catalogue:water.pressure:drop_pct/{sid}"


async def network(service: AlertsService) -> tuple[dict[str, str], dict[str, str]]:
    codes, sensors, events = water_main(["up", "w0", "w1", "w2", "x"])
    c = codes
    await service.apply_assets([*events, link(c["up"], c["w0"]), link(c["w0"], c["w1"]), link(c["w1"], c["w2"])])
    return codes, sensors


async def low(service: AlertsService, sids: list[str], t: int, value: float = LOW) -> dict[str, str]:
    """Readings held for the `for` window; the alert id of each sensor."""
    await service.evaluate([batch([(s, t, value) for s in sids]), batch([(s, t + 120 * S, value) for s in sids])])
    out = {}
    for s in sids:
        alert_id = service.engine.states[fingerprint(s)].alert_id
        assert alert_id is not None
        out[s] = alert_id
    return out


async def marks(service: AlertsService, alert_id: str) -> tuple[bool, str | None, list[str]]:
    a = await service.get_alert(alert_id=alert_id, principal=OPERATOR)
    return a["suppressed"], a["suppressed_by"], [h["kind"] for h in a["history"]]


async def test_a_burst_suppresses_downstream_only_and_releases_them_when_it_clears(service: AlertsService) -> None:
    codes, s = await network(service)
    alerts = await low(service, [s["up"], s["w1"], s["w2"], s["x"]], T0)
    for alert_id in alerts.values():
        assert (await marks(service, alert_id))[0] is False

    # The burst on w0: w1 and w2 downstream are kept and marked; upstream and the unrelated main are not.
    burst = (await low(service, [s["w0"]], T0 + 200 * S, BURST))[s["w0"]]
    b = await service.get_alert(alert_id=burst, principal=OPERATOR)
    assert b["level"] == "I" and not b["suppressed"]
    for name in ("w1", "w2"):
        suppressed, by, kinds = await marks(service, alerts[s[name]])
        assert (suppressed, by, kinds) == (True, burst, ["raised", "suppressed"])
    detail = await service.get_alert(alert_id=alerts[s["w2"]], principal=OPERATOR)
    note = detail["history"][-1]["comment"]
    assert burst in note and "water_pipe_burst" in note and codes["w0"] in note
    for name in ("up", "x"):
        assert await marks(service, alerts[s[name]]) == (False, None, ["raised"])
    # Suppressed, not dropped: repeated breaches still count on the suppressed alerts.
    before = (await service.get_alert(alert_id=alerts[s["w1"]], principal=OPERATOR))["breach_count"]
    await service.evaluate([batch([(s["w1"], T0 + 300 * S, LOW)])])
    assert (await service.get_alert(alert_id=alerts[s["w1"]], principal=OPERATOR))["breach_count"] == before + 1

    # The burst's condition clears (pressure back for 300 s): the targets are un-suppressed.
    await service.evaluate([batch([(s["w0"], T0 + 400 * S, BASELINE), (s["w0"], T0 + 700 * S, BASELINE)])])
    assert (await service.get_alert(alert_id=burst, principal=OPERATOR))["condition"] == "cleared"
    for name in ("w1", "w2"):
        assert await marks(service, alerts[s[name]]) == (False, None, ["raised", "suppressed", "unsuppressed"])
    subjects = await outbox_subjects(service)
    assert subjects.count(f"events.alerts.suppressed.{REGION}") == 2
    assert subjects.count(f"events.alerts.unsuppressed.{REGION}") == 2


async def test_an_alert_raised_during_a_burst_is_suppressed_from_the_start_until_the_burst_closes(
    service: AlertsService,
) -> None:
    _, s = await network(service)
    burst = (await low(service, [s["w0"]], T0, BURST))[s["w0"]]
    target = (await low(service, [s["w2"]], T0 + 10 * S))[s["w2"]]
    assert await marks(service, target) == (True, burst, ["raised"])
    # The burst closes as a false alarm (people decide; the condition is still active): released too.
    await service.transition(alert_id=burst, to_state=State.VERIFYING, principal=OPERATOR)
    await service.transition(alert_id=burst, to_state=State.FALSE_ALARM, principal=OPERATOR)
    assert await marks(service, target) == (False, None, ["raised", "unsuppressed"])


async def test_max_depth_and_the_source_level_bound_the_inhibition(service: AlertsService) -> None:
    service.policy = service.policy.model_copy(
        update={
            "inhibit": (
                Inhibit(
                    name="burst_one_hop",
                    source=Matcher(quantity=("water.pressure",), min_level=Level.II),
                    target=Matcher(quantity=("water.pressure",)),
                    max_depth=1,
                ),
            )
        }
    )
    _, s = await network(service)
    alerts = await low(service, [s["w1"], s["w2"]], T0)
    # A level IV drop on w0 is no burst: nothing is suppressed.
    w0 = (await low(service, [s["w0"]], T0 + 200 * S))[s["w0"]]
    assert not (await marks(service, alerts[s["w1"]]))[0]
    # Escalated to I it is: one link down only.
    await service.evaluate([batch([(s["w0"], T0 + 400 * S, BURST)])])
    assert (await service.get_alert(alert_id=w0, principal=OPERATOR))["level"] == "I"
    assert (await marks(service, alerts[s["w1"]]))[:2] == (True, w0)
    assert not (await marks(service, alerts[s["w2"]]))[0]


async def test_link_events_on_the_bus_build_the_network_and_a_retired_link_releases(
    alerts: AlertsApp, events: EventReader
) -> None:
    codes, s, census = water_main(["w0", "w1"])
    await publish_entries(alerts.bus, [*census, link(codes["w0"], codes["w1"])])

    async def linked() -> bool:
        return bool(alerts.service.network.downstream(codes["w0"], 1))

    await wait_until(linked)
    await publish_readings(alerts, [(s["w0"], T0, BURST), (s["w1"], T0, LOW)])
    await publish_readings(alerts, [(s["w0"], T0 + 120 * S, BURST), (s["w1"], T0 + 120 * S, LOW)])
    got = {e.alert.sensor_id: e.alert for _, e in await events.next(2)}
    assert not got[s["w0"]].suppressed
    assert got[s["w1"]].suppressed and got[s["w1"]].suppressed_by == got[s["w0"]].id
    # assets retires the link: w1 is no longer downstream of the burst.
    await publish_entries(alerts.bus, [link(codes["w0"], codes["w1"], version=2, retired=True)])
    [(subject, released)] = await events.next()
    assert subject == f"events.alerts.unsuppressed.{REGION}"
    assert released.kind == alerts_pb2.ALERT_EVENT_KIND_UNSUPPRESSED
    assert released.alert.id == got[s["w1"]].id and not released.alert.suppressed
