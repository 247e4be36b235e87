"""The fill estimate (gpufleet.core.fill): shares per host room, the tables, and their store."""

from __future__ import annotations

import numpy as np
import pytest

from gpufleet.core import fill
from gpufleet.core.fill import SHARE_SCALE, FillTables, never_filled, room_shares

GiB = 2**30
# Three one-GPU kinds (30%, 40% and 40% of a GPU, the last needing 4 CPUs and 8 GiB of memory)
# and a two-GPU kind, which the estimate ignores.
WEIGHT = np.array([1.0, 1.0, 2.0, 5.0])
CPU = np.array([0.0, 0.0, 4000.0, 0.0])
MEMORY = np.array([0.0, 0.0, 8.0 * GiB, 0.0])
SIZE_INDEX = np.array([0, 1, 1, -1])  # sizes: 0 = 30%, 1 = 40%
SIZES = ((True, 300, frozenset()), (True, 400, frozenset()))


def shares_for(cpu: list[float], memory: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return room_shares(WEIGHT, CPU, MEMORY, SIZE_INDEX, len(SIZES), np.array(cpu), np.array(memory))


def test_rooms_that_take_the_same_kinds_share_a_row_of_shares():
    shares, which = shares_for([16000, 8000, 2000, 4000], [64 * GiB, 8 * GiB, 64 * GiB, 4 * GiB])
    # The first two take every kind (one row for both); the last two cannot take the 4-CPU,
    # 8 GiB one, the one for want of CPU, the other of memory.
    assert which[0] == which[1]
    # Shares are of all one-GPU jobs (weight 4), whether or not this room takes them.
    assert shares[which[0]].tolist() == [0.25, 0.75]
    assert shares[which[2]].tolist() == shares[which[3]].tolist() == [0.25, 0.25]


def test_a_room_that_takes_no_kind_leaves_everything_unfilled():
    shares, which = room_shares(
        WEIGHT[:1], CPU[:1] + 1000, MEMORY[:1], SIZE_INDEX[:1], 1, np.array([500]), np.array([0])
    )
    assert shares.tolist() == [[0.0]]
    tables = FillTables(SIZES[:1], ((16 * GiB, "A10"),))
    free = np.array([0, 300, 1000])
    never = tables.never_filled(shares, which[[0, 0, 0]], np.zeros(3, np.int64), free)
    assert never.tolist() == [0, 300, 1000]


def test_never_filled_is_the_mean_over_the_jobs_that_fit():
    key = fill.fill_key(SIZES, [0.5, 0.5])
    never = never_filled(key, 16 * GiB, "A10")
    # E(f) = f below 30%; 30% and 40% jobs equally likely: E(700) = (E(400) + E(300)) / 2, etc.
    assert never[299] == 299
    assert never[400] == pytest.approx((never[100] + never[0]) / 2)
    assert never[700] == pytest.approx(25.0)
    assert never[1000] == pytest.approx(62.5)
    # A byte-sized job is converted to thousandths of this GPU, rounding up: 5 GiB of 16 GiB
    # is 312.5 -> 313 thousandths, so 312 free is never filled.
    bytes_key = ((False, 5 * GiB, frozenset(), 1.0),)
    assert never_filled(bytes_key, 16 * GiB, "A10")[312] == 312
    assert never_filled(bytes_key, 16 * GiB, "A10")[313] == 0
    # A job limited to other products never fills this GPU.
    other = ((True, 300, frozenset({"H100"}), 1.0),)
    assert never_filled(other, 16 * GiB, "A10")[SHARE_SCALE] == SHARE_SCALE


def test_the_store_gives_the_same_tables_after_it_forgets(monkeypatch):
    classes = ((16 * GiB, "A10"), (80 * GiB, "H100"))
    tables = FillTables(SIZES, classes)
    rows = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    which = np.array([0, 1, 2, 0])
    gpu_class = np.array([0, 1, 0, 1])
    free = np.array([1000, 700, 600, 400])
    first = tables.never_filled(rows, which, gpu_class, free)
    expected = [
        never_filled(fill.fill_key(SIZES, rows[w].tolist()), *classes[c])[f]
        for w, c, f in zip(which, gpu_class, free, strict=True)
    ]
    assert first.tolist() == pytest.approx(expected)
    monkeypatch.setattr(fill, "KEPT_TABLES", 2)  # more rows than it keeps: it starts afresh
    assert tables.never_filled(rows, which, gpu_class, free).tolist() == pytest.approx(expected)
    assert tables.never_filled(rows[::-1], 2 - which, gpu_class, free).tolist() == pytest.approx(expected)
