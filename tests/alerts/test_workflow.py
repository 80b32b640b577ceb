"""The handling workflow on a real database: every legal step, every illegal one refused, roles, time limits."""

from __future__ import annotations

import pytest

from lifeline.alerts import models
from lifeline.alerts.service import AlertsService
from lifeline.alerts.workflow import NEXT, State
from lifeline.kit.db import Database
from lifeline.kit.problems import ProblemError

from .helpers import OPERATOR, OTHER_CITY, VIEWER, Clock, count, outbox_subjects, raise_alert

HAPPY = [
    State.VERIFYING,
    State.CONFIRMED,
    State.DISPATCHED,
    State.HANDLING,
    State.FEEDBACK,
    State.CHECKING,
    State.RETURNED,
    State.HANDLING,
    State.FEEDBACK,
    State.CHECKING,
    State.CLOSED,
]


async def move(service: AlertsService, alert_id: str, to: State, **kw) -> dict:
    alert, _ = await service.transition(alert_id=alert_id, to_state=to, principal=OPERATOR, **kw)
    return alert


async def test_every_legal_step_and_every_illegal_one_refused(service: AlertsService) -> None:
    alert_id = await raise_alert(service)
    state = State.RAISED
    for to in HAPPY:
        for illegal in sorted(set(State) - NEXT[state] - {State.SUPERVISED}):
            with pytest.raises(ProblemError) as err:
                await move(service, alert_id, illegal)
            assert err.value.status == 409 and err.value.detail == "alerts.illegal_transition"
            assert err.value.params["state"] == str(state)
        alert = await move(
            service,
            alert_id,
            to,
            comment=f"→ {to}",
            attachments=[{"ref": "s3://photos/1.jpg", "name": "现场照片", "media_type": "image/jpeg"}],
        )
        assert alert["state"] == str(to)
        state = to
    detail = await service.get_alert(alert_id=alert_id, principal=VIEWER)
    steps = [(h["from_state"], h["to_state"], h["actor"]) for h in detail["history"][1:]]
    assert steps == [(str(a), str(b), "op-1") for a, b in zip([State.RAISED, *HAPPY], HAPPY, strict=False)]
    dispatched = next(h for h in detail["history"] if h["to_state"] == "dispatched")
    assert dispatched["unit_id"] == "unit-gas-1" and detail["unit_id"] == "unit-gas-1"  # the facility's unit
    assert dispatched["attachments"][0]["ref"] == "s3://photos/1.jpg"
    assert detail["closed_ms"] and detail["due_ms"] is None
    subjects = await outbox_subjects(service)
    assert [s.split(".")[2] for s in subjects] == ["raised"] + ["transitioned"] * (len(HAPPY) - 1) + ["closed"]
    # Closed is final: nothing moves it, and nothing was written by the refusals.
    for to in State:
        with pytest.raises(ProblemError):
            await move(service, alert_id, to)
    assert await count(service, models.alert_history) == 1 + len(HAPPY)


async def test_false_alarm_closes_the_alert(service: AlertsService) -> None:
    alert_id = await raise_alert(service)
    await move(service, alert_id, State.VERIFYING)
    alert = await move(service, alert_id, State.FALSE_ALARM, comment="传感器受潮")
    assert alert["state"] == "false_alarm" and alert["closed_ms"]
    items, _ = await service.list_alerts(principal=VIEWER)
    assert alert_id not in [a["id"] for a in items]
    items, _ = await service.list_alerts(principal=VIEWER, include_closed=True)
    assert alert_id in [a["id"] for a in items]


async def test_roles_and_regions_are_checked(service: AlertsService) -> None:
    alert_id = await raise_alert(service)
    with pytest.raises(ProblemError) as err:
        await service.transition(alert_id=alert_id, to_state=State.VERIFYING, principal=VIEWER)
    assert err.value.status == 403
    with pytest.raises(ProblemError) as err:
        await service.transition(alert_id=alert_id, to_state=State.VERIFYING, principal=OTHER_CITY)
    assert err.value.status == 403
    with pytest.raises(ProblemError) as err:
        await service.get_alert(alert_id=alert_id, principal=OTHER_CITY)
    assert err.value.status == 403
    items, _ = await service.list_alerts(principal=OTHER_CITY)
    assert items == []


async def test_dispatch_needs_a_responsible_unit(service: AlertsService) -> None:
    alert_id = await raise_alert(service, unit_id="")
    await move(service, alert_id, State.VERIFYING)
    await move(service, alert_id, State.CONFIRMED)
    with pytest.raises(ProblemError) as err:
        await move(service, alert_id, State.DISPATCHED)
    assert err.value.status == 422 and err.value.errors[0].field == "unit_id"
    alert = await move(service, alert_id, State.DISPATCHED, unit_id="unit-emergency")
    assert alert["unit_id"] == "unit-emergency"


async def test_overdue_steps_are_supervised_with_a_controllable_clock(service: AlertsService, clock: Clock) -> None:
    alert_id = await raise_alert(service)  # level IV: verify within 2 h, dispatch within 4 h of confirming
    clock.advance(7199)
    assert await service.check_overdue() == 0
    clock.advance(1)
    assert await service.check_overdue() == 1
    assert await service.check_overdue() == 0  # marked once
    assert (await outbox_subjects(service))[-1] == "events.alerts.overdue.340104"
    detail = await service.get_alert(alert_id=alert_id, principal=VIEWER)
    assert (detail["state"], detail["resume_state"], detail["overdue"]) == ("supervised", "raised", True)
    assert detail["history"][-1]["step"] == "verify"
    # Supervised: the missed step still has to be done; the next step has its own limit again.
    await move(service, alert_id, State.VERIFYING)
    alert = await move(service, alert_id, State.CONFIRMED)
    assert alert["overdue"] is False and alert["due_step"] == "dispatch"
    assert alert["due_ms"] == clock.now + 14_400_000
    clock.advance(14_400)
    assert await service.check_overdue() == 1
    detail = await service.get_alert(alert_id=alert_id, principal=VIEWER)
    assert (detail["state"], detail["resume_state"]) == ("supervised", "confirmed")


async def test_the_limits_survive_a_restart(service: AlertsService, clock: Clock) -> None:
    alert_id = await raise_alert(service)
    db = Database.from_url(str(service.db.engine.url.render_as_string(hide_password=False)))
    try:
        fresh = AlertsService(region="340100", catalogue=service.catalogue, policy=service.policy, db=db, clock=clock)
        await fresh.load()
        clock.advance(7200)
        assert await fresh.check_overdue() == 1
    finally:
        await db.dispose()
    detail = await service.get_alert(alert_id=alert_id, principal=VIEWER)
    assert detail["state"] == "supervised"
