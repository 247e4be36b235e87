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

SHARE_SCALE = 1000  # shares of a GPU's VRAM are in thousandths; so are the tables
FILL_SHARE_DECIMALS = 2  # each size's share of one-GPU jobs is rounded to this
# Distinct share vectors whose tables `FillTables` keeps (a replay of Alibaba's trace meets
# about 200): up to 256 x GPU classes x 8 KiB.
KEPT_TABLES = 256

Size = tuple[bool, int, frozenset[str]]  # how a kind asks for VRAM: (share?, threshold, products)
FillKey = tuple[tuple[bool, int, frozenset[str], float], ...]  # sizes with their (rounded) shares


def room_shares(
    weight: np.ndarray,
    cpu: np.ndarray,
    memory: np.ndarray,
    size_index: np.ndarray,
    size_count: int,
    room_cpu: np.ndarray,
    room_memory: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per host room (``room_cpu``, ``room_memory``): each size's share of the one-GPU jobs,
    counting only the kinds that room can take, rounded. The kinds are the mix's (``weight``,
    ``cpu``, ``memory`` per kind; ``size_index``: the kind's size, -1 for kinds that are not
    one-GPU). Returns each distinct row once (float64[U, size_count]) and each room's row."""
    one = size_index >= 0
    weight, cpu, memory, size_index = weight[one], cpu[one], memory[one], size_index[one]
    total = weight.sum()
    # Which kinds a room takes depends only on how many kinds' CPU and how many kinds' memory
    # it covers, so rooms are grouped by those two counts before any per-kind work.
    covered = np.searchsorted(np.sort(cpu), room_cpu, side="right") * (len(cpu) + 1)
    covered += np.searchsorted(np.sort(memory), room_memory, side="right")
    _, first, which = np.unique(covered, return_index=True, return_inverse=True)
    per_size = np.zeros((len(weight), size_count))
    if total > 0:
        per_size[np.arange(len(weight)), size_index] = weight / total
    takes = (cpu <= room_cpu[first, None]) & (memory <= room_memory[first, None])
    return np.round(takes.astype(np.float64) @ per_size, FILL_SHARE_DECIMALS), which.reshape(-1)


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
    never = np.arange(SHARE_SCALE + 1, dtype=np.float64)
    if kinds:
        kinds.sort()
        sizes = np.array([size for size, _ in kinds], np.int64)
        shares = np.array([share for _, share in kinds])
        cumulative = np.cumsum(shares)
        smallest = int(sizes[0])
        # Free amounts in blocks no longer than the smallest size depend only on earlier ones.
        for start in range(smallest, SHARE_SCALE + 1, smallest):
            free = np.arange(start, min(start + smallest, SHARE_SCALE + 1))
            fits = sizes[None, :] <= free[:, None]
            rest = never[np.where(fits, free[:, None] - sizes[None, :], 0)]
            fitting = np.searchsorted(sizes, free, side="right")
            never[free] = np.where(fits, shares * rest, 0.0).sum(axis=1) / cumulative[fitting - 1]
    never.flags.writeable = False
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
        with self._lock:
            if len(self._index) + len(shares) > KEPT_TABLES:
                self._index.clear()
            tables = np.empty(len(shares), np.int64)
            for i, row in enumerate(shares):
                at = self._index.get(row.tobytes())
                tables[i] = self._add(row) if at is None else at
            return self._tables[tables[which], gpu_class, free]

    def _add(self, shares: np.ndarray) -> int:
        at = len(self._index)
        if at == len(self._tables):
            self._tables = np.concatenate([self._tables, np.empty_like(self._tables)])
        key = fill_key(self.sizes, shares.tolist())
        for c, (vram_total, product) in enumerate(self.classes):
            self._tables[at, c] = never_filled(key, vram_total, product)
        self._index[shares.tobytes()] = at
        return at


@lru_cache(maxsize=16)
def tables_for(sizes: tuple[Size, ...], classes: tuple[tuple[int, str], ...]) -> FillTables:
    """The `FillTables` for these sizes and GPU classes (one per pair, kept while in use)."""
    return FillTables(sizes, classes)
