"""The audit log: every write and every cross-region read — who, what, when, from where.

Records go to the ``lifeline.audit`` logger as structured (JSON) lines, so the deployment routes them
to its audit store with the rest of the logs but can keep them apart by logger name.
"""

from __future__ import annotations

import logging
from typing import Any

from lifeline.kit.auth import Principal

audit_log = logging.getLogger("lifeline.audit")


def audit(
    *,
    principal: Principal,
    action: str,
    resource: str,
    region: str | None,
    source: str | None,
    outcome: str = "ok",
    **details: Any,
) -> None:
    """Record one audited action (the log line carries the time and the trace id)."""
    audit_log.info(
        "%s %s by %s",
        action,
        resource,
        principal.subject,
        extra={
            "audit": True,
            "action": action,
            "resource": resource,
            "resource_region": region,
            "subject": principal.subject,
            "client_id": principal.client_id,
            "principal_region": principal.region,
            "source": source,
            "outcome": outcome,
            **details,
        },
    )


def is_cross_region(principal: Principal, region: str) -> bool:
    """A read of data outside the principal's own region code (a parent looking at a child)."""
    return principal.region != region
