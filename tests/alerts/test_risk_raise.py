"""A risk source near the facility raises the alert's level by one, never above I (policy [risk]).

Gas CH4 (%LEL): IV ≥ 5, III ≥ 10, II ≥ 25, I ≥ 50; gas `for` 30 s. The packaged policy counts risk
sources of grade III or worse, named in ``facility_codes`` or within 50 m of the facility.
"""

from __future__ import annotations

import secrets

from lifeline.alerts.policy import RiskRaise
from lifeline.alerts.service import AlertsService
from lifeline.v1 import assets_pb2, common_pb2

from .helpers import OPERATOR, REGION, batch, census_payloads, fresh_ids

S = 1000
T0 = 1_760_000_000_000
GRADE = {
    "I": common_pb2.WARNING_LEVEL_I_RED,
    "II": common_pb2.WARNING_LEVEL_II_ORANGE,
    "III": common_pb2.WARNING_LEVEL_III_YELLOW,
    "IV": common_pb2.WARNING_LEVEL_IV_BLUE,
}
# The facility's pipe runs east along latitude 31.82 from lon 117.200 to 117.210 (about 950 m).
LINE = [assets_pb2.LonLat(lon=117.200, lat=31.82), assets_pb2.LonLat(lon=117.210, lat=31.82)]


def risk(
    grade: str, *, facility_codes: tuple[str, ...] = (), at: tuple[float, float] = (117.0, 31.0), version: int = 1
) -> tuple[str, tuple[str, bytes]]:
    rid = f"RS-{secrets.token_hex(4)}"
    r = assets_pb2.RiskSource(
        id=rid,
        name="燃气管道占压",
        hazard="gas_leak",
        grade=GRADE[grade],
        region=REGION,
        geometry=assets_pb2.Geometry(
            type=assets_pb2.GEOMETRY_TYPE_POINT, coordinates=[assets_pb2.LonLat(lon=at[0], lat=at[1])]
        ),
        facility_codes=list(facility_codes),
        version=version,
    )
    return rid, ("risk", assets_pb2.RiskSourceChanged(change=1, risk=r).SerializeToString())


async def gas_facility(service: AlertsService) -> tuple[str, str]:
    code, serial = fresh_ids()
    sid = f"CH4-{serial}"
    census = census_payloads(code, {sid: "gas.ch4"})
    fac = assets_pb2.FacilityChanged.FromString(census[0][1])
    fac.facility.geometry.CopyFrom(assets_pb2.Geometry(type=assets_pb2.GEOMETRY_TYPE_LINE_STRING, coordinates=LINE))
    census[0] = ("facility", fac.SerializeToString())
    await service.apply_assets(census)
    return code, sid


async def raise_at(service: AlertsService, sid: str, value: float, t: int = T0) -> dict:
    await service.evaluate([batch([(sid, t, value), (sid, t + 30 * S, value)])])
    alert_id = service.engine.states[f"catalogue:gas.ch4:value/{sid}"].alert_id
    assert alert_id is not None
    return await service.get_alert(alert_id=alert_id, principal=OPERATOR)


async def test_a_named_risk_source_raises_by_one_with_its_id_in_the_history(service: AlertsService) -> None:
    code, sid = await gas_facility(service)
    rid, event = risk("II", facility_codes=(code,))
    await service.apply_assets([event])
    a = await raise_at(service, sid, 6.0)  # the rule says IV
    assert (a["level"], a["peak_level"]) == ("III", "III")
    # Raised at III at once (one `raised` event a level-III subscriber sees), the risk source named.
    [raised] = a["history"]
    assert (raised["kind"], raised["from_level"], raised["to_level"]) == ("raised", None, "III")
    assert rid in raised["comment"] and "rule level IV" in raised["comment"]
    # Its time limits are level III's, not level IV's.
    assert a["due_ms"] - a["raised_ms"] == service.policy.limits["III"].verify_s * 1000
    # The rule escalates to II: the alert goes to I; to I (60 %LEL): it stays at I, never above.
    await service.evaluate([batch([(sid, T0 + 40 * S, 30.0)])])
    a = await service.get_alert(alert_id=a["id"], principal=OPERATOR)
    assert (a["level"], a["history"][-1]["to_level"]) == ("I", "I") and rid in a["history"][-1]["comment"]
    n = len(a["history"])
    await service.evaluate([batch([(sid, T0 + 50 * S, 60.0)])])
    a = await service.get_alert(alert_id=a["id"], principal=OPERATOR)
    assert a["level"] == a["peak_level"] == "I" and len(a["history"]) == n


async def test_grade_distance_and_the_switch_decide_whether_a_risk_source_counts(service: AlertsService) -> None:
    # Grade IV is below the policy's min_grade III: no raise.
    code, sid = await gas_facility(service)
    _, event = risk("IV", facility_codes=(code,))
    await service.apply_assets([event])
    assert (await raise_at(service, sid, 6.0))["level"] == "IV"

    # Not named, but about 30 m north of the pipe: within 50 m, raised; about 550 m away: not.
    _, near = await gas_facility(service)
    _, far = await gas_facility(service)
    rid, event = risk("I", at=(117.205, 31.82027))
    await service.apply_assets([event])
    a = await raise_at(service, near, 6.0)
    assert a["level"] == "III" and rid in a["history"][-1]["comment"]
    service.risks.risks.pop(rid)
    _, event = risk("I", at=(117.205, 31.825))
    await service.apply_assets([event])
    assert (await raise_at(service, far, 6.0))["level"] == "IV"

    # Switched off in the policy: a named grade I risk source changes nothing.
    service.policy = service.policy.model_copy(update={"risk": RiskRaise(enabled=False)})
    off_code, off = await gas_facility(service)
    _, event = risk("I", facility_codes=(off_code,))
    await service.apply_assets([event])
    assert (await raise_at(service, off, 6.0))["level"] == "IV"


async def test_a_retired_risk_source_no_longer_raises(service: AlertsService) -> None:
    code, sid = await gas_facility(service)
    rid, event = risk("II", facility_codes=(code,))
    await service.apply_assets([event])
    retired = assets_pb2.RiskSource(id=rid, grade=GRADE["II"], facility_codes=[code], retired=True, version=2)
    await service.apply_assets([("risk", assets_pb2.RiskSourceChanged(change=3, risk=retired).SerializeToString())])
    assert (await raise_at(service, sid, 6.0))["level"] == "IV"


async def test_a_risk_source_registered_or_retired_while_the_alert_is_open_moves_its_level(
    service: AlertsService,
) -> None:
    code, sid = await gas_facility(service)
    a = await raise_at(service, sid, 12.0)  # III
    assert a["level"] == "III"
    rid, event = risk("I", facility_codes=(code,))
    await service.apply_assets([event])
    a = await service.get_alert(alert_id=a["id"], principal=OPERATOR)
    assert a["level"] == "II" and rid in a["history"][-1]["comment"]
    retired = assets_pb2.RiskSource(id=rid, grade=GRADE["I"], facility_codes=[code], retired=True, version=2)
    await service.apply_assets([("risk", assets_pb2.RiskSourceChanged(change=3, risk=retired).SerializeToString())])
    a = await service.get_alert(alert_id=a["id"], principal=OPERATOR)
    assert a["level"] == "III" and a["peak_level"] == "II"
    assert [(h["kind"], h["to_level"]) for h in a["history"]] == [
        ("raised", "III"),
        ("level_changed", "II"),
        ("level_changed", "III"),
    ]
