"""Kubernetes condition bookkeeping: set a condition, keep its transition time when unchanged."""

from __future__ import annotations

from datetime import datetime

from shoal.api.v1alpha1 import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    *,
    type: str,
    status: bool | ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A copy of ``conditions`` with ``type`` set; ``lastTransitionTime`` moves only when the
    status changes."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = next((c for c in conditions if c.type == type), None)
    since = previous.last_transition_time if previous and previous.status == status else now
    new = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message[:32768],
        observed_generation=generation,
        last_transition_time=since,
    )
    return [c for c in conditions if c.type != type] + [new]


def condition(conditions: list[Condition], type: str) -> Condition | None:
    """The condition of ``type``, if any."""
    return next((c for c in conditions if c.type == type), None)


def is_true(conditions: list[Condition], type: str) -> bool:
    """Whether condition ``type`` is present and True."""
    c = condition(conditions, type)
    return c is not None and c.status == ConditionStatus.TRUE
