"""lifeline.kit.audit writes one structured record per audited action."""

from __future__ import annotations

import json
import logging

import pytest

from lifeline.kit.audit import audit, is_cross_region
from lifeline.kit.auth import Principal
from lifeline.kit.telemetry import JsonLogFormatter


def test_audit_record_says_who_what_where(caplog: pytest.LogCaptureFixture) -> None:
    p = Principal(subject="svc-1", client_id="svc", roles=frozenset({"service"}), region="340100")
    with caplog.at_level(logging.INFO, logger="lifeline.audit"):
        audit(principal=p, action="readings.write", resource="readings", region="340100", source="10.0.0.7", count=3)
    [record] = [r for r in caplog.records if r.name == "lifeline.audit"]
    # Built without logging's stack search, yet what audit_log.info() in audit() would give.
    assert (record.funcName, record.filename, record.levelname) == ("audit", "audit.py", "INFO")
    assert record.getMessage() == "readings.write readings by svc-1"
    line = json.loads(JsonLogFormatter().format(record))
    assert line["action"] == "readings.write"
    assert line["subject"] == "svc-1" and line["source"] == "10.0.0.7" and line["count"] == 3
    assert line["ts"] and line["level"] == "INFO"


def test_cross_region() -> None:
    p = Principal(subject="m", client_id="m", roles=frozenset(), region="340000")
    assert is_cross_region(p, "340100") and not is_cross_region(p, "340000")
