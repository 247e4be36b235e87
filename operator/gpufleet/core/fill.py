"""How well a GPU's free VRAM will be filled: the look-ahead term of the placement rule.

For a GPU with f thousandths of its VRAM free, `never_filled` gives the thousandths expected
never to be used if one-GPU jobs keep arriving from the mix and each that fits lands on it,
until none fits. Only the kinds of job the GPU's host can still take (CPU and memory) count:
a hole that only jobs too big for the host would fit stays empty.

The tables depend on the mix only through each size's share of one-GPU jobs, rounded to
`FILL_SHARE_DECIMALS`, so the few distinct ones are computed once and reused while the mix
drifts (`FillTables`).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from gpufleet.core.compiled import compiled

SHARE_SCALE = 1000  # shares of a GPU's VRAM are in thousandths; so are the tables
FILL_SHARE_DECIMALS = 2  # each size's share of one-GPU jobs is rounded to this
# Distinct share vectors whose tables `FillTables` keeps (a replay of Alibaba's trace meets
# about 200): up to 256 x GPU classes x 8 KiB.
KEPT_TABLES = 256

Size = tuple[bool, int, frozenset[str]]  # how a kind asks for VRAM: (share?, threshold, products)
FillKey = tuple[tuple[bool, int, frozenset[str], float], ...]  # sizes with their (rounded) shares


@compiled  # plain loops: numpy calls inside compiled code take far longer to compile
def room_shares(weight, cpu, memory, size_index, size_count, room_cpu, room_memory):
    """Per host room (``room_cpu``, ``room_memory``): each size's share of the one-GPU jobs,
    counting only the kinds that room can take, rounded. The kinds are the mix's (``weight``,
    ``cpu``, ``memory`` per kind; ``size_index``: the kind's size, -1 for kinds that are not
    one-GPU). Returns each distinct row once (float64[U, size_count]) and each room's row."""
    total = 0.0
    for k in range(len(weight)):
        if size_index[k] >= 0:
            total += weight[k]
    # Which kinds a room takes depends only on how many kinds' CPU and how many kinds' memory
    # it covers, so rooms are grouped by those two counts before any per-kind work.
    codes = np.empty(len(room_cpu), np.int64)
    for r in range(len(room_cpu)):
        cpu_covered = memory_covered = 0
        for k in range(len(weight)):
            if size_index[k] >= 0:
                cpu_covered += cpu[k] <= room_cpu[r]
                memory_covered += memory[k] <= room_memory[r]
        codes[r] = cpu_covered * (len(weight) + 1) + memory_covered
    which, distinct_codes = np.empty(len(room_cpu), np.int64), np.empty(len(room_cpu), np.int64)
    rows = np.zeros((len(room_cpu), size_count))
    scale = 10.0**FILL_SHARE_DECIMALS
    distinct = 0
    for r in range(len(room_cpu)):
        which[r] = -1
        for u in range(distinct):
            if distinct_codes[u] == codes[r]:
                which[r] = u
                break
        if which[r] >= 0:
            continue
        which[r], distinct_codes[distinct] = distinct, codes[r]
        for k in range(len(weight)):
            if size_index[k] >= 0 and cpu[k] <= room_cpu[r] and memory[k] <= room_memory[r] and total > 0:
                rows[distinct, size_index[k]] += weight[k] / total
        for i in range(size_count):  # as numpy rounds to decimals: scale, round half to even, unscale
            rows[distinct, i] = np.rint(rows[distinct, i] * scale) / scale
        distinct += 1
    return rows[:distinct], which


def fill_key(sizes: tuple[Size, ...], shares: list[float]) -> FillKey:
    """The sizes with a share above 0, with their shares."""
    return tuple((*size, share) for size, share in zip(sizes, shares, strict=True) if share > 0)


@lru_cache(maxsize=1024)  # 8 KiB each
def never_filled(key: FillKey, vram_total: int, product: str) -> np.ndarray:
    """float64[SHARE_SCALE + 1]: for a GPU of this size and product with f thousandths of its
    VRAM free, the thousandths expected never to be used if one-GPU jobs of the key's sizes
    keep arriving in its proportions and each that fits lands on it, until none fits:
    E(f) = f when no size fits, else the share-weighted mean of E(f - size) over those that do.
    Byte sizes are converted to thousandths of this GPU, rounding up."""
    kinds: list[tuple[int, float]] = []
    for share_kind, threshold, products, share in key:
        if products and product not in products:
            continue
        size = threshold if share_kind else -(-threshold * SHARE_SCALE // vram_total)  # round up
        if 0 < size <= SHARE_SCALE:
            kinds.append((size, share))
    kinds.sort()
    never = _expected_unfilled(
        np.array([size for size, _ in kinds], np.int64), np.array([s for _, s in kinds])
    )
    never.flags.writeable = False
    return never


@compiled
def _expected_unfilled(sizes, shares):
    """`never_filled`'s recursion for sizes (ascending, in thousandths) with these shares."""
    never = np.arange(SHARE_SCALE + 1).astype(np.float64)
    for free in range(sizes[0] if len(sizes) else SHARE_SCALE + 1, SHARE_SCALE + 1):
        fitting = expected = 0.0
        for k in range(len(sizes)):
            if sizes[k] > free:
                break
            fitting += shares[k]
            expected += shares[k] * never[free - sizes[k]]
        never[free] = expected / fitting
    return never


class FillTables:
    """The `never_filled` tables met so far for one mix layout (its sizes) and one fleet's GPU
    classes ((VRAM, product) pairs), stacked so that a decision reads them in one step.

    Shared by every decision with the same sizes and classes (`tables_for`); a lock keeps it
    consistent if decisions run in several threads. It forgets everything past `KEPT_TABLES`.
    """

    def __init__(self, sizes: tuple[Size, ...], classes: tuple[tuple[int, str], ...]) -> None:
        self.sizes, self.classes = sizes, classes
        self._index: dict[bytes, int] = {}
        self._tables = np.empty((16, len(classes), SHARE_SCALE + 1))
        self._lock = threading.Lock()

    def never_filled(
        self, shares: np.ndarray, which: np.ndarray, gpu_class: np.ndarray, free: np.ndarray
    ) -> np.ndarray:
        """float64[len(free)]: `never_filled` for each point (GPU class, free thousandths), with
        the mix's shares ``shares[which]`` (rows as `room_shares` gives them)."""
        keys = [row.tobytes() for row in shares]
        with self._lock:
            # Rows repeat (rooms that differ can round to the same shares): only new ones count.
            if len(self._index) + len(set(keys).difference(self._index)) > KEPT_TABLES:
                self._index.clear()
            tables = np.empty(len(shares), np.int64)
            for i, (key, row) in enumerate(zip(keys, shares, strict=True)):
                at = self._index.get(key)
                tables[i] = self._add(key, row) if at is None else at
            return self._tables[tables[which], gpu_class, free]

    def _add(self, key: bytes, shares: np.ndarray) -> int:
        at = len(self._index)
        if at == len(self._tables):
            self._tables = np.concatenate([self._tables, np.empty_like(self._tables)])
        sizes = fill_key(self.sizes, shares.tolist())
        for c, (vram_total, product) in enumerate(self.classes):
            self._tables[at, c] = never_filled(sizes, vram_total, product)
        self._index[key] = at
        return at


@lru_cache(maxsize=16)
def tables_for(sizes: tuple[Size, ...], classes: tuple[tuple[int, str], ...]) -> FillTables:
    """The `FillTables` for these sizes and GPU classes (one per pair, kept while in use)."""
    return FillTables(sizes, classes)
