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
    if not audit_log.isEnabledFor(logging.INFO):
        return
    # What audit_log.info() would build, without its search of the stack for the caller (always
    # this function): the front door audits every request.
    record = audit_log.makeRecord(
        audit_log.name,
        logging.INFO,
        _CODE.co_filename,
        _CODE.co_firstlineno,
        "%s %s by %s",
        (action, resource, principal.subject),
        None,
        _CODE.co_name,
        {
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
    audit_log.handle(record)


_CODE = audit.__code__


def is_cross_region(principal: Principal, region: str) -> bool:
    """A read of data outside the principal's own region code (a parent looking at a child)."""
    return principal.region != region
