"""Conditions keep metav1.Condition semantics and the kstatus meaning GitOps tools read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gpufleet.api.conditions import (
    REASON_MEANINGS,
    TERMINAL_PHASES,
    Condition,
    ConditionStatus,
    ConditionType,
    JobPhase,
    Reason,
    find_condition,
    job_conditions,
    set_condition,
)

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready(status: ConditionStatus, at: datetime, reason: str = Reason.WORKERS_READY) -> Condition:
    return Condition(
        type=ConditionType.READY, status=status, reason=reason, message="m", last_transition_time=at
    )


def test_same_status_keeps_the_transition_time_but_takes_the_new_reason() -> None:
    conditions = set_condition([], ready(ConditionStatus.TRUE, T0))
    conditions = set_condition(conditions, ready(ConditionStatus.TRUE, T1, Reason.SCALING_UP))
    (only,) = conditions
    assert only.last_transition_time == T0
    assert only.reason == Reason.SCALING_UP


def test_a_status_change_moves_the_transition_time() -> None:
    conditions = set_condition([ready(ConditionStatus.TRUE, T0)], ready(ConditionStatus.FALSE, T1))
    assert find_condition(conditions, ConditionType.READY).last_transition_time == T1


def test_other_types_are_kept_in_order() -> None:
    stalled = Condition(
        type=ConditionType.STALLED,
        status=ConditionStatus.FALSE,
        reason="R",
        message="",
        last_transition_time=T0,
    )
    conditions = set_condition([stalled], ready(ConditionStatus.TRUE, T1))
    assert [c.type for c in conditions] == [ConditionType.STALLED, ConditionType.READY]
    assert find_condition(conditions, ConditionType.SCALING) is None


@pytest.mark.parametrize(
    ("phase", "ready_", "reconciling", "stalled"),
    [
        (JobPhase.PENDING, False, True, False),
        (JobPhase.QUEUED, False, True, False),
        (JobPhase.RUNNING, False, True, False),
        (JobPhase.SUCCEEDED, True, False, False),
        (JobPhase.FAILED, False, False, True),
        (JobPhase.CANCELLED, True, False, False),
    ],
)
def test_job_conditions_follow_kstatus(
    phase: JobPhase, ready_: bool, reconciling: bool, stalled: bool
) -> None:
    conditions = job_conditions(phase, Reason.COMPLETED, "done", 3, T0)
    got = {c.type: c.status == ConditionStatus.TRUE for c in conditions}
    assert got == {
        ConditionType.READY: ready_,
        ConditionType.RECONCILING: reconciling,
        ConditionType.STALLED: stalled,
    }
    assert all(c.observed_generation == 3 and c.last_transition_time == T0 for c in conditions)


@pytest.mark.parametrize(
    "reason",
    [
        Reason.UNSCHEDULABLE,
        Reason.POOL_NOT_FOUND,
        Reason.MODEL_NOT_SERVED,
        Reason.TASK_NOT_SERVED,
        Reason.INVALID_INPUT,
    ],
)
@pytest.mark.parametrize("phase", [JobPhase.PENDING, JobPhase.QUEUED])
def test_a_job_only_its_user_can_unblock_is_stalled(phase: JobPhase, reason: Reason) -> None:
    conditions = job_conditions(phase, reason, "why", 2, T0)
    got = {c.type: c.status == ConditionStatus.TRUE for c in conditions}
    assert got == {ConditionType.READY: False, ConditionType.RECONCILING: False, ConditionType.STALLED: True}
    assert all(c.reason == reason and c.message == "why" for c in conditions)


@pytest.mark.parametrize("reason", [Reason.QUEUED, Reason.RETRYING, Reason.DISPATCHED, Reason.RUNNING])
def test_a_job_waiting_for_the_fleet_is_reconciling_not_stalled(reason: Reason) -> None:
    conditions = job_conditions(JobPhase.PENDING, reason, "", 1, T0)
    got = {c.type: c.status == ConditionStatus.TRUE for c in conditions}
    assert got == {ConditionType.READY: False, ConditionType.RECONCILING: True, ConditionType.STALLED: False}


def test_a_succeeded_job_is_never_stalled_whatever_the_reason() -> None:
    conditions = job_conditions(JobPhase.SUCCEEDED, Reason.INVALID_INPUT, "", 1, T0)
    assert not any(c.type == ConditionType.STALLED and c.status == ConditionStatus.TRUE for c in conditions)


def test_terminal_phases() -> None:
    assert {JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED} == TERMINAL_PHASES


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reason", ""),
        ("reason", "has spaces"),
        ("reason", "9Starts"),
        ("status", "Maybe"),
        ("type", "no spaces allowed"),
    ],
)
def test_condition_shape_is_metav1(field: str, value: str) -> None:
    data = {
        "type": "Ready",
        "status": "True",
        "reason": "Ok",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(ValidationError, match=field):
        Condition.model_validate(data | {field: value})


def test_every_reason_is_explained() -> None:
    assert set(REASON_MEANINGS) == set(Reason)


def test_reasons_are_valid_condition_reasons() -> None:
    for reason in Reason:
        Condition(type="Ready", status="True", reason=reason, message="", last_transition_time=T0)
