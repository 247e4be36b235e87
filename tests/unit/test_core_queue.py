"""Queue order (gpufleet.core.queue): priority first, FIFO within a priority, aging, positions."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.api.models import MAX_PRIORITY
from gpufleet.core.queue import (
    DEFAULT_AGING_SECONDS,
    WaitingJob,
    arrival_position,
    effective_priority,
    order,
    positions,
    ranks,
)

NOW = 1_000_000.0
AGING = 300.0

priorities = st.integers(-MAX_PRIORITY, MAX_PRIORITY)
small_priorities = st.integers(-5, 5)
ages = st.floats(0, 10 * AGING, allow_nan=False)


@st.composite
def queues(draw: st.DrawFn, priority: st.SearchStrategy[int] = small_priorities) -> list[WaitingJob]:
    """Jobs with unique keys; arrival times collide often (same creation second)."""
    count = draw(st.integers(0, 12))
    keys = draw(
        st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=count, max_size=count, unique=True)
    )
    return [
        WaitingJob(
            f"ns/{key}", draw(priority), NOW - draw(st.sampled_from([0.0, 1.0, 299.0, 300.0, 301.0, 900.0]))
        )
        for key in keys
    ]


def job(key: str, priority: int = 0, waited: float = 0.0) -> WaitingJob:
    return WaitingJob(f"ns/{key}", priority, NOW - waited)


def keys(jobs: list[WaitingJob]) -> list[str]:
    return [j.key.removeprefix("ns/") for j in jobs]


# --- examples ---------------------------------------------------------------------------------


def test_higher_priority_goes_first_then_arrival_then_name() -> None:
    jobs = [job("late", 0, waited=1), job("low", -1, waited=60), job("high", 5), job("early", 0, waited=2)]
    jobs.append(job("also-early", 0, waited=2))  # same arrival second as "early": the name decides
    assert keys(order(jobs, NOW)) == ["high", "also-early", "early", "late", "low"]


def test_a_job_ages_one_level_per_aging_period() -> None:
    fresh = job("x", 3)
    assert effective_priority(fresh, NOW, AGING) == 3
    assert effective_priority(job("x", 3, waited=AGING - 0.001), NOW, AGING) == 3
    assert effective_priority(job("x", 3, waited=AGING), NOW, AGING) == 4
    assert effective_priority(job("x", 3, waited=10 * AGING + 1), NOW, AGING) == 13


def test_a_job_from_the_future_does_not_lose_priority() -> None:
    # Clock skew between the API server's creation timestamps and the operator.
    assert effective_priority(job("x", 2, waited=-5000), NOW, AGING) == 2


@pytest.mark.parametrize("aging", [0.0, -1.0])
def test_aging_off_when_the_period_is_not_positive(aging: float) -> None:
    assert effective_priority(job("x", 1, waited=10**9), NOW, aging) == 1
    assert keys(order([job("old-low", 0, waited=10**9), job("new-high", 1)], NOW, aging)) == [
        "new-high",
        "old-low",
    ]


def test_default_aging_is_used_by_order() -> None:
    old_low, new_high = job("old-low", 0, waited=DEFAULT_AGING_SECONDS * 2), job("new-high", 1)
    assert keys(order([new_high, old_low], NOW)) == ["old-low", "new-high"]


def test_positions_are_one_based_in_order() -> None:
    ordered = order([job("b", 0, waited=1), job("a", 1), job("c", 0)], NOW)
    assert positions(ordered) == {"ns/a": 1, "ns/b": 2, "ns/c": 3}
    assert positions([]) == {}


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(jobs=queues(), seed=st.integers(0, 2**32 - 1), aging=st.sampled_from([0.0, AGING]))
def test_order_is_a_total_order_independent_of_input_order(
    jobs: list[WaitingJob], seed: int, aging: float
) -> None:
    shuffled = list(jobs)
    random.Random(seed).shuffle(shuffled)
    ordered = order(jobs, NOW, aging)
    assert sorted(ordered, key=lambda j: j.key) == sorted(jobs, key=lambda j: j.key)  # a permutation
    assert order(shuffled, NOW, aging) == ordered
    assert order(ordered, NOW, aging) == ordered  # idempotent


@settings(max_examples=200, deadline=None)
@given(jobs=queues(priority=priorities))
def test_without_aging_priority_order_then_fifo(jobs: list[WaitingJob]) -> None:
    ordered = order(jobs, NOW, aging_seconds=0)
    for ahead, behind in itertools.pairwise(ordered):
        assert ahead.priority >= behind.priority
        if ahead.priority == behind.priority:
            assert (ahead.enqueued_at, ahead.key) < (behind.enqueued_at, behind.key)


@settings(max_examples=200, deadline=None)
@given(jobs=queues())
def test_with_aging_effective_priority_order_and_fifo_within_a_priority(jobs: list[WaitingJob]) -> None:
    ordered = order(jobs, NOW, AGING)
    for ahead, behind in itertools.pairwise(ordered):
        assert effective_priority(ahead, NOW, AGING) >= effective_priority(behind, NOW, AGING)
    for index, ahead in enumerate(ordered):
        for behind in ordered[index + 1 :]:
            if ahead.priority == behind.priority:
                # Aging never lets a later arrival of the same priority overtake an earlier one.
                assert (ahead.enqueued_at, ahead.key) < (behind.enqueued_at, behind.key)


@settings(max_examples=300, deadline=None)
@given(low=priorities, gap=st.integers(1, 50), extra=st.floats(0, AGING - 1e-3))
def test_aging_lifts_a_long_waiting_low_priority_job_above_a_fresh_high_priority_one(
    low: int, gap: int, extra: float
) -> None:
    high = low + gap
    lift = (gap + 1) * AGING  # waiting this long puts the low job a whole level above
    fresh = WaitingJob("ns/fresh-high", high, NOW)
    waited = WaitingJob("ns/waited-low", low, NOW - lift - extra)
    assert keys(order([fresh, waited], NOW, AGING)) == ["waited-low", "fresh-high"]
    # One aging period less and it is only level with the fresh job: arrival decides, and it
    # came first. Less than that and the fresh high-priority job goes first.
    level = WaitingJob("ns/waited-low", low, NOW - gap * AGING - extra)
    assert keys(order([fresh, level], NOW, AGING)) == ["waited-low", "fresh-high"]
    not_yet = WaitingJob("ns/waited-low", low, NOW - gap * AGING + 1.0)
    assert keys(order([fresh, not_yet], NOW, AGING)) == ["fresh-high", "waited-low"]


@settings(max_examples=200, deadline=None)
@given(jobs=queues(), later=st.floats(0, 10 * AGING))
def test_effective_priority_never_falls_as_time_passes(jobs: list[WaitingJob], later: float) -> None:
    for j in jobs:
        assert j.priority <= effective_priority(j, NOW, AGING) <= effective_priority(j, NOW + later, AGING)


@settings(max_examples=100, deadline=None)
@given(jobs=queues())
def test_positions_number_every_job_once_from_one(jobs: list[WaitingJob]) -> None:
    ordered = order(jobs, NOW, AGING)
    numbered = positions(ordered)
    assert [numbered[j.key] for j in ordered] == list(range(1, len(jobs) + 1))


@given(queues(), small_priorities)
def test_an_arrivals_position_is_where_ordering_the_queue_again_would_put_it(
    jobs: list[WaitingJob], priority: int
) -> None:
    arrival = WaitingJob("ns/zzzz", priority, NOW)  # the latest arrival, last of its ties
    where = order([*jobs, arrival], NOW).index(arrival)
    assert arrival_position(ranks(order(jobs, NOW), NOW), [], priority) == where


@pytest.mark.parametrize(
    ("queue", "arrived", "priority", "position"),
    [
        pytest.param([], [], 0, 0, id="empty queue"),
        pytest.param([0, 0, 0], [], 0, 3, id="behind its equals"),
        pytest.param([0, 0, 0], [], 5, 0, id="ahead of lower priorities"),
        pytest.param([9, 5, 0], [], 5, 2, id="behind higher and equal"),
        pytest.param([9, 5, 0], [5, 0, 7], 5, 4, id="and behind arrivals of at least its priority"),
        pytest.param([0], [0, 0], -1, 3, id="lowest goes last"),
    ],
)
def test_arrival_position(queue: list[int], arrived: list[int], priority: int, position: int) -> None:
    waiting = [WaitingJob(f"ns/{i}", p, NOW) for i, p in enumerate(queue)]
    assert arrival_position(ranks(order(waiting, NOW), NOW), arrived, priority) == position
