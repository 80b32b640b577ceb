"""The handling workflow (domain reference §5): which step may follow which, and its time limits.

RAISED → VERIFYING → FALSE_ALARM | CONFIRMED → DISPATCHED → HANDLING → FEEDBACK → CHECKING → CLOSED, with
RETURNED (a failed check; back to HANDLING) and SUPERVISED (a missed time limit: the alert is marked and
the step it was in still has to be done, so the transitions of that step stay open).
"""

from __future__ import annotations

from enum import StrEnum

from lifeline.kit.catalogue import Level

from .policy import Policy


class State(StrEnum):
    RAISED = "raised"
    VERIFYING = "verifying"
    FALSE_ALARM = "false_alarm"
    CONFIRMED = "confirmed"
    DISPATCHED = "dispatched"
    HANDLING = "handling"
    FEEDBACK = "feedback"
    CHECKING = "checking"
    CLOSED = "closed"
    RETURNED = "returned"
    SUPERVISED = "supervised"


class Step(StrEnum):
    VERIFY = "verify"
    DISPATCH = "dispatch"
    ON_SITE = "on_site"
    CLOSE = "close"


NEXT: dict[State, frozenset[State]] = {
    State.RAISED: frozenset({State.VERIFYING}),
    State.VERIFYING: frozenset({State.FALSE_ALARM, State.CONFIRMED}),
    State.CONFIRMED: frozenset({State.DISPATCHED}),
    State.DISPATCHED: frozenset({State.HANDLING}),
    State.HANDLING: frozenset({State.FEEDBACK}),
    State.FEEDBACK: frozenset({State.CHECKING}),
    State.CHECKING: frozenset({State.CLOSED, State.RETURNED}),
    State.RETURNED: frozenset({State.HANDLING}),
    State.FALSE_ALARM: frozenset(),
    State.CLOSED: frozenset(),
}
TERMINAL = frozenset({State.CLOSED, State.FALSE_ALARM})

# The time-limited step an alert is in, per workflow state, and where that limit counts from.
STEP_OF: dict[State, Step] = {
    State.RAISED: Step.VERIFY,
    State.VERIFYING: Step.VERIFY,
    State.CONFIRMED: Step.DISPATCH,
    State.DISPATCHED: Step.ON_SITE,
    State.HANDLING: Step.CLOSE,
    State.FEEDBACK: Step.CLOSE,
    State.CHECKING: Step.CLOSE,
    State.RETURNED: Step.CLOSE,
}


def allowed(current: State, resume: State | None) -> frozenset[State]:
    """States reachable from ``current`` (a SUPERVISED alert continues from the state it was in)."""
    if current is State.SUPERVISED:
        return NEXT.get(resume or State.RAISED, frozenset())
    return NEXT.get(current, frozenset())


def due(
    policy: Policy, *, state: State, level: Level, raised_ms: int, entered_ms: int
) -> tuple[Step | None, int | None]:
    """The step an alert in ``state`` is timed on and when it is due (close counts from raising)."""
    step = STEP_OF.get(state)
    if step is None:
        return None, None
    limits = policy.limits[level]
    if step is Step.VERIFY:
        return step, raised_ms + limits.verify_s * 1000
    if step is Step.DISPATCH:
        return step, entered_ms + limits.dispatch_s * 1000
    if step is Step.ON_SITE:
        return step, entered_ms + limits.on_site_s * 1000
    return step, raised_ms + limits.close_s * 1000
