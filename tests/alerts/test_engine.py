"""The rule engine alone (no I/O): every rule kind fires and clears at the right readings.

Defaults used: gas.ch4 thresholds IV 5 / III 10 / II 25 / I 50 %LEL (catalogue), gas `for` 30 s and clear
after 120 s, clear margin 10 % of the lowest threshold (0.5 %LEL) (policy).
"""

from __future__ import annotations

import math

import pytest

from lifeline.alerts.engine import (
    Condition,
    Engine,
    FacilityContext,
    RuleSpec,
    SensorContext,
    ThresholdOverride,
    Window,
)
from lifeline.alerts.policy import load_policy
from lifeline.kit.catalogue import CatalogueError, Level, ThresholdRule, load_quantities

S = 1000
T0 = 1_700_000_000_000
FAC = "3401000101000001"


@pytest.fixture
def engine() -> Engine:
    e = Engine(catalogue=load_quantities(), policy=load_policy())
    e.set_facility(FacilityContext(code=FAC, kind="gas", region="340104", unit_id="u1"))
    e.set_sensor(SensorContext("ch4-1", "gas.ch4", FAC, "340104"))
    return e


def kinds(changes) -> list[tuple[str, str]]:
    return [(c.kind, str(c.level)) for c in changes if c.kind != "breach"]


def feed(engine: Engine, sensor: str, points: list[tuple[int, float]]) -> list[tuple[int, str, str]]:
    out = []
    for t, v in points:
        for c in engine.evaluate(sensor, T0 + t * S, v):
            if c.kind != "breach":
                out.append((t, c.kind, str(c.level)))
    return out


def test_threshold_fires_only_after_for_and_resets_on_a_dip(engine: Engine) -> None:
    # 5 at 0 s starts the window; a dip at 20 s resets it; 30 s of breach from 25 s fires at 55 s.
    got = feed(engine, "ch4-1", [(0, 6), (20, 4), (25, 6), (40, 7), (54, 7), (55, 7)])
    assert got == [(55, "raised", "IV")]


def test_for_edge_is_inclusive(engine: Engine) -> None:
    assert feed(engine, "ch4-1", [(0, 6), (29, 6)]) == []
    assert feed(engine, "ch4-1", [(30, 6)]) == [(30, "raised", "IV")]


def test_hysteresis_clear_needs_margin_and_duration(engine: Engine) -> None:
    feed(engine, "ch4-1", [(0, 6), (30, 6)])
    # 4.8 is below 5 but inside the 0.5 margin: still held, nothing clears however long.
    assert feed(engine, "ch4-1", [(60, 4.8), (300, 4.8)]) == []
    # 4.4 is past the margin: the clear window starts at 310 and needs 120 s; a relapse at 400 resets it.
    assert feed(engine, "ch4-1", [(310, 4.4), (400, 4.9), (410, 4.4), (529, 4.0)]) == []
    assert feed(engine, "ch4-1", [(530, 4.0)]) == [(530, "cleared", "IV")]
    # Cleared: a new breach needs a full `for` window again.
    assert feed(engine, "ch4-1", [(540, 6), (569, 6), (570, 6)]) == [(570, "raised", "IV")]


def test_one_alert_escalates_iv_to_i_and_back(engine: Engine) -> None:
    got = feed(engine, "ch4-1", [(0, 6), (30, 6), (40, 12), (50, 30), (60, 60)])
    assert got == [
        (30, "raised", "IV"),
        (40, "level_changed", "III"),
        (50, "level_changed", "II"),
        (60, "level_changed", "I"),
    ]
    # Down again: each step waits for its clear window (120 s) with the margin.
    got = feed(
        engine, "ch4-1", [(70, 30), (189, 30), (190, 30), (200, 12), (320, 12), (330, 6), (450, 6), (460, 1), (580, 1)]
    )
    assert got == [
        (190, "level_changed", "II"),
        (320, "level_changed", "III"),
        (450, "level_changed", "IV"),
        (580, "cleared", "IV"),
    ]
    assert len({c for c in engine.states}) == 1  # one fingerprint throughout


def test_out_of_order_and_repeated_readings_change_nothing(engine: Engine) -> None:
    feed(engine, "ch4-1", [(0, 6), (30, 6)])
    # An older reading of a normal value (it would start the clear window) is ignored, as is a repeat.
    assert engine.evaluate("ch4-1", T0 + 10 * S, 1.0) == []
    assert engine.evaluate("ch4-1", T0 + 30 * S, 1.0) == []
    st = engine.states["catalogue:gas.ch4:value/ch4-1"]
    assert st.firing is Level.IV and st.clear_since is None


def test_bad_quality_maintenance_window_and_unknown_sensor_are_not_evaluated(engine: Engine) -> None:
    assert engine.evaluate("ch4-1", T0, 80.0, usable=False) == []
    engine.set_sensor(
        SensorContext("ch4-1", "gas.ch4", FAC, "340104", windows=(Window("maintenance", T0, T0 + 3600 * S),))
    )
    assert feed(engine, "ch4-1", [(0, 80), (60, 80)]) == []
    assert engine.evaluate("nobody", T0, 80.0) == []
    # After the window the same values count from scratch.
    assert feed(engine, "ch4-1", [(3600, 80), (3630, 80)]) == [(3630, "raised", "I")]


def test_rollback_restores_states_so_a_redelivery_is_evaluated_again(engine: Engine) -> None:
    feed(engine, "ch4-1", [(0, 6)])
    engine.begin()
    assert feed(engine, "ch4-1", [(30, 6)]) == [(30, "raised", "IV")]
    engine.rollback()  # the transaction failed
    engine.begin()
    assert feed(engine, "ch4-1", [(30, 6)]) == [(30, "raised", "IV")]
    engine.commit()
    assert feed(engine, "ch4-1", [(30, 6)]) == []  # now it is a repeat


def test_restart_in_the_middle_of_a_for_window(engine: Engine) -> None:
    engine.begin()
    feed(engine, "ch4-1", [(0, 6), (10, 6)])
    stored = {fp: engine.states[fp].copy() for fp in engine.dirty}
    engine.commit()
    fresh = Engine(catalogue=load_quantities(), policy=load_policy())
    fresh.set_facility(FacilityContext(code=FAC, kind="gas", region="340104"))
    fresh.set_sensor(SensorContext("ch4-1", "gas.ch4", FAC, "340104"))
    for st in stored.values():
        fresh.load_state(st)
    # The window started at 0 s before the restart: the alert fires at 30 s, not 40 s.
    assert feed(fresh, "ch4-1", [(5, 6), (20, 6), (30, 6)]) == [(30, "raised", "IV")]


def test_sensor_and_facility_thresholds_from_assets_override_the_catalogue(engine: Engine) -> None:
    tr = ThresholdRule(direction="above", levels={Level.II: 3.0})
    engine.set_sensor(
        SensorContext("ch4-1", "gas.ch4", FAC, "340104", thresholds=(ThresholdOverride("gas.ch4", "value", tr),))
    )
    rules = engine.rules_for(engine.sensors["ch4-1"])
    assert rules[0].origin == "assets" and rules[0].id == "catalogue:gas.ch4:value"
    assert feed(engine, "ch4-1", [(0, 3.5), (30, 3.5)]) == [(30, "raised", "II")]


def test_deviation_from_setpoint(engine: Engine) -> None:
    engine.set_sensor(SensorContext("p-1", "gas.pressure", FAC, "340104", setpoint=400.0))
    # 15 % off the setpoint is level III (gas.pressure deviation_pct IV 10 / III 15 / II 20 / I 30).
    assert feed(engine, "p-1", [(0, 340), (30, 340)]) == [(30, "raised", "III")]
    engine.set_sensor(SensorContext("p-2", "gas.pressure", FAC, "340104"))
    assert feed(engine, "p-2", [(0, 1), (30, 1)]) == []  # no setpoint: nothing to compare


def rate_rule(unit: str, limit: float) -> RuleSpec:
    tr = ThresholdRule(direction="below", levels={Level.III: limit})
    cond = Condition.from_threshold("gas.pressure", unit, tr, margin_pct=0, baseline_days=7)
    return RuleSpec(id="api:drop", name="pressure falling", kind="threshold", origin="api", conditions=(cond,))


def test_rate_of_change_per_minute(engine: Engine) -> None:
    engine.set_sensor(SensorContext("p-1", "gas.pressure", FAC, "340104"))
    engine.set_rule(rate_rule("rate_per_minute", -10.0))
    # Steady, then falling 20 kPa per minute: fires once half a minute of the fall is seen.
    got = feed(engine, "p-1", [(0, 400), (10, 400), (20, 400), (30, 400), (40, 400), (50, 400), (60, 400)])
    assert got == []
    got = feed(engine, "p-1", [(70, 396), (80, 393), (90, 390), (100, 386), (110, 383), (120, 380)])
    assert got and got[0][1:] == ("raised", "III")
    # Flat again: the rate is back to 0 and the alert clears (clear_for 0, no margin).
    got = feed(engine, "p-1", [(t, 380) for t in range(130, 260, 10)])
    assert got[-1][1] == "cleared"


def test_deviation_from_the_rolling_same_hour_baseline(engine: Engine) -> None:
    engine.set_sensor(SensorContext("f-1", "water.flow", FAC, "340104"))
    tr = ThresholdRule(direction="above", levels={Level.IV: 20.0, Level.III: 50.0})
    cond = Condition.from_threshold("water.flow", "baseline_deviation_pct", tr, margin_pct=0, baseline_days=7)
    engine.set_rule(RuleSpec(id="api:night", name="night flow", kind="threshold", origin="api", conditions=(cond,)))
    day = 86_400
    # Five nights of 10 m³/h at 02:00 local, and 30 at 14:00: nothing fires (no baseline for 3 days).
    out = []
    for d in range(5):
        out += feed(engine, "f-1", [(d * day + 18 * 3600, 10.0), (d * day + 18 * 3600 + 60, 10.0)])
        out += feed(engine, "f-1", [(d * day + 6 * 3600, 30.0), (d * day + 6 * 3600 + 60, 30.0)])
    assert out == []
    # Night 6: 13 at 02:00 is 30 % over that hour's median (10) → IV; 30 at 02:00 would be 200 % → III.
    assert feed(engine, "f-1", [(5 * day + 18 * 3600, 13.0)]) == [(5 * day + 18 * 3600, "raised", "IV")]
    assert engine.finished_hours  # finished hours are handed to the service to keep


def test_no_data_rule_from_sensor_status(engine: Engine) -> None:
    got = engine.sensor_status("ch4-1", True, T0)
    assert [(c.kind, c.level) for c in got] == [("raised", Level.IV)]
    assert kinds(engine.sensor_status("ch4-1", True, T0 + 5 * S)) == []
    assert engine.sensor_status("ch4-1", False, T0 - S) == []  # older status event: ignored
    assert [c.kind for c in engine.sensor_status("ch4-1", False, T0 + 10 * S)] == ["cleared"]


def test_composite_on_one_facility(engine: Engine) -> None:
    engine.set_sensor(SensorContext("p-1", "gas.pressure", FAC, "340104"))
    gas = Condition.from_threshold(
        "gas.ch4", "value", ThresholdRule(direction="above", levels={Level.IV: 5.0}), margin_pct=0, baseline_days=7
    )
    low = Condition.from_threshold(
        "gas.pressure",
        "value",
        ThresholdRule(direction="below", levels={Level.IV: 300.0}),
        margin_pct=0,
        baseline_days=7,
    )
    engine.set_rule(
        RuleSpec(
            id="api:leak",
            name="leak",
            kind="composite",
            origin="api",
            conditions=(gas, low),
            level=Level.I,
            facility_kind="gas",
        )
    )
    changes = engine.evaluate("p-1", T0, 250.0)  # pressure low alone
    assert [c for c in changes if c.rule.id == "api:leak"] == []
    changes = engine.evaluate("ch4-1", T0 + S, 6.0)  # now both hold
    leak = [c for c in changes if c.rule.id == "api:leak"]
    assert [(c.kind, c.level, c.subject) for c in leak] == [("raised", Level.I, FAC)]
    changes = engine.evaluate("p-1", T0 + 2 * S, 350.0)  # pressure back: the composite clears
    assert [c.kind for c in changes if c.rule.id == "api:leak"] == ["cleared"]


def test_outside_band_rule() -> None:
    e = Engine(catalogue=load_quantities(), policy=load_policy())
    e.set_sensor(SensorContext("ph-1", "water.ph", FAC, "340104"))
    rules = e.rules_for(e.sensors["ph-1"])
    cond = next(r for r in rules if r.kind == "threshold").conditions[0]
    assert cond.level(7.0) is None and cond.level(9.0) is Level.III and cond.level(6.0) is Level.III
    assert math.isclose(cond.clear_margin, 0.1)  # 10 % of the half-width of 6.5–8.5


def test_an_operator_policy_overrides_durations_limits_and_facility_kind_thresholds(tmp_path) -> None:
    own = tmp_path / "policy.toml"
    own.write_text(
        """
[domains.gas]
for_s = 0

[limits.I]
verify_s = 60

[[override]]
facility_kind = "utility_tunnel"
quantity = "gas.ch4"
measure = "value"
direction = "above"
levels = { II = 20.0, I = 25.0 }
""",
        encoding="utf-8",
    )
    policy = load_policy(own)
    assert policy.limits[Level.I].verify_s == 60 and policy.limits[Level.II].verify_s == 600  # the rest is kept
    e = Engine(catalogue=load_quantities(), policy=policy)
    tunnel = "3401000701000001"
    e.set_facility(FacilityContext(code=tunnel, kind="utility_tunnel", region="340104"))
    e.set_facility(FacilityContext(code=FAC, kind="gas", region="340104"))
    e.set_sensor(SensorContext("t-1", "gas.ch4", tunnel, "340104"))
    e.set_sensor(SensorContext("g-1", "gas.ch4", FAC, "340104"))
    # In a utility tunnel 22 %LEL is level II at once (no `for` for gas now); next to a gas main it is III.
    assert feed(e, "t-1", [(0, 22.0)]) == [(0, "raised", "II")]
    assert feed(e, "g-1", [(0, 22.0)]) == [(0, "raised", "III")]


def test_a_malformed_policy_is_refused_with_the_reason(tmp_path) -> None:
    own = tmp_path / "policy.toml"
    own.write_text("[limits.I]\nverify_s = -5\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"limits\.I\.verify_s"):
        load_policy(own)


def test_sensors_binding_the_same_rules_share_them_and_an_override_stays_their_own(engine: Engine) -> None:
    # Memory with 10,000 sensors (issue #4): one bound tuple (and one no-data rule) per distinct binding.
    engine.set_sensor(SensorContext("ch4-2", "gas.ch4", FAC, "340104"))
    own = ThresholdOverride("gas.ch4", "value", ThresholdRule(direction="above", levels={Level.IV: 2.0}))
    engine.set_sensor(SensorContext("ch4-3", "gas.ch4", FAC, "340104", thresholds=(own,)))
    one, two, three = (engine.rules_for(engine.sensors[s]) for s in ("ch4-1", "ch4-2", "ch4-3"))
    assert one is two and one[-1] is three[-1] and one[-1].kind == "no_data"
    assert three != one and three[0].origin == "assets"
    assert feed(engine, "ch4-3", [(0, 3), (30, 3)]) == [(30, "raised", "IV")]
    assert feed(engine, "ch4-2", [(0, 3), (30, 3)]) == []
    engine.rebind()  # rebuilt alike after a change of rules or contexts
    assert engine.rules_for(engine.sensors["ch4-1"]) == one


def test_a_rate_keeps_a_few_samples_per_horizon(engine: Engine) -> None:
    engine.set_sensor(SensorContext("p-1", "gas.pressure", FAC, "340104"))
    engine.set_rule(rate_rule("rate_per_minute", -10.0))
    for k in range(200):  # a reading a second for 200 s, falling 1 per second: -60 per minute
        engine.evaluate("p-1", T0 + k * S, 300.0 - k)
    [tracker] = engine._rates.values()
    assert len(tracker.samples) <= 9
    assert tracker.rate(T0 + 200 * S, 100.0, 60_000) == pytest.approx(-60.0)
