"""Silences over alerts already open: marked when the silence starts, un-marked when it ends or is
expired, unless another silence (or an inhibition) still holds them; every change in the history."""

from __future__ import annotations

import httpx

from lifeline.alerts.app import AlertsApp
from lifeline.alerts.service import AlertsService

from .helpers import OPERATOR, REGION, EventReader, outbox_subjects, raise_alert

MIN = 60_000


async def silence(service: AlertsService, *, starts_in_s: int = 0, lasts_s: int = 3600, **matchers: str) -> str:
    now = service.clock()
    doc = await service.create_silence(
        silence_in={
            **matchers,
            "starts_ms": now + starts_in_s * 1000,
            "ends_ms": now + (starts_in_s + lasts_s) * 1000,
            "comment": "管网检修",
        },
        principal=OPERATOR,
    )
    return str(doc["id"])


async def state(service: AlertsService, alert_id: str) -> tuple[bool, str | None, list[str]]:
    a = await service.get_alert(alert_id=alert_id, principal=OPERATOR)
    return a["suppressed"], a["suppressed_by"], [h["kind"] for h in a["history"]]


async def test_a_silence_marks_open_alerts_and_expiring_it_unmarks_them(service: AlertsService, clock) -> None:
    alert_id = await raise_alert(service)
    other = await raise_alert(service)
    a = await service.get_alert(alert_id=alert_id, principal=OPERATOR)
    first = await silence(service, facility_code=a["facility_code"])
    assert await state(service, alert_id) == (True, first, ["raised", "suppressed"])
    assert await state(service, other) == (False, None, ["raised"])  # another facility
    # A second silence over the same alert: expiring the first leaves the alert silenced by the second.
    clock.advance(1)
    second = await silence(service, sensor_id=a["sensor_id"])
    assert (await state(service, alert_id))[:2] == (True, first)
    await service.expire_silence(silence_id=first, principal=OPERATOR)
    assert await state(service, alert_id) == (True, second, ["raised", "suppressed", "suppressed"])
    await service.expire_silence(silence_id=second, principal=OPERATOR)
    assert await state(service, alert_id) == (False, None, ["raised", "suppressed", "suppressed", "unsuppressed"])
    history = (await service.get_alert(alert_id=alert_id, principal=OPERATOR))["history"]
    assert first in history[1]["comment"] and second in history[2]["comment"]
    subjects = await outbox_subjects(service)
    assert subjects.count(f"events.alerts.suppressed.{REGION}") == 2
    assert subjects.count(f"events.alerts.unsuppressed.{REGION}") == 1


async def test_the_timer_applies_silences_that_start_and_end_later(service: AlertsService, clock) -> None:
    alert_id = await raise_alert(service)
    a = await service.get_alert(alert_id=alert_id, principal=OPERATOR)
    sid = await silence(service, starts_in_s=60, lasts_s=600, facility_code=a["facility_code"])
    assert (await state(service, alert_id))[0] is False  # not started yet
    assert await service.check_silences() == 0
    clock.advance(61)
    assert await service.check_silences() == 1
    assert (await state(service, alert_id))[:2] == (True, sid)
    clock.advance(300)
    assert await service.check_silences() == 0  # still running
    clock.advance(300)
    assert await service.check_silences() == 1
    assert await state(service, alert_id) == (False, None, ["raised", "suppressed", "unsuppressed"])
    # Each start and end is applied once.
    assert await service.check_silences() == 0


async def test_over_rest_a_silence_suppresses_then_expires(
    alerts: AlertsApp, client: httpx.AsyncClient, events: EventReader
) -> None:
    alert_id = await raise_alert(alerts.service)
    a = await alerts.service.get_alert(alert_id=alert_id, principal=OPERATOR)
    await events.next()  # raised
    r = await client.post(
        "/v1/silences",
        json={"facility_code": a["facility_code"], "ends_ms": alerts.service.clock() + 10 * MIN, "comment": "检修"},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    [(subject, ev)] = await events.next()
    assert subject == f"events.alerts.suppressed.{REGION}" and ev.alert.suppressed and ev.alert.suppressed_by == sid
    got = (await client.get(f"/v1/alerts/{alert_id}")).json()
    assert got["suppressed"] and got["suppressed_by"] == sid
    r = await client.post(f"/v1/silences/{sid}/expire")
    assert r.status_code == 200, r.text
    [(subject, ev)] = await events.next()
    assert subject == f"events.alerts.unsuppressed.{REGION}" and not ev.alert.suppressed
    got = (await client.get(f"/v1/alerts/{alert_id}")).json()
    assert not got["suppressed"] and [h["kind"] for h in got["history"]] == ["raised", "suppressed", "unsuppressed"]


async def test_a_silence_that_ended_while_alerts_was_down_is_unmarked_after_the_restart(
    service: AlertsService, clock
) -> None:
    alert_id = await raise_alert(service)
    a = await service.get_alert(alert_id=alert_id, principal=OPERATOR)
    sid = await silence(service, lasts_s=60, facility_code=a["facility_code"])
    assert (await state(service, alert_id))[:2] == (True, sid)
    clock.advance(61)
    restarted = AlertsService(
        region="340100", catalogue=service.catalogue, policy=service.policy, db=service.db, clock=clock
    )
    await restarted.load()
    assert await restarted.check_silences() == 1
    assert await state(restarted, alert_id) == (False, None, ["raised", "suppressed", "unsuppressed"])
