"""The model cache policy: which cached models make room for a new one. Pure functions.

One rule serves both caches a worker keeps: models resident in a GPU's memory (sized in VRAM
bytes) and model files in its disk cache (sized in bytes on disk). A model in use (a run
needs it, or it is being loaded) or pinned (``preload``) is never evicted; among the others
the least recently used goes first. The worker reports ``evictable_bytes`` from the same
rule, so the operator's placement and the benchmarks count exactly what the worker would free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedModel:
    name: str
    size_bytes: int
    last_used: float  # any increasing clock; only the order matters
    in_use: int = 0  # runs that need it now, plus one while it is being loaded
    pinned: bool = False

    @property
    def evictable(self) -> bool:
        return self.in_use == 0 and not self.pinned


def evictable_bytes(cached: Iterable[CachedModel]) -> int:
    """Bytes the cache could free for a new model."""
    return sum(model.size_bytes for model in cached if model.evictable)


def choose_evictions(cached: Sequence[CachedModel], need_bytes: int, free_bytes: int) -> list[str] | None:
    """Models to evict, least recently used first, so that ``need_bytes`` fit; None when no
    set of evictable models frees enough. Evicts nothing when ``need_bytes`` already fit."""
    if need_bytes <= free_bytes:
        return []
    if need_bytes > free_bytes + evictable_bytes(cached):
        return None
    evicted: list[str] = []
    for model in sorted((m for m in cached if m.evictable), key=lambda m: (m.last_used, m.name)):
        evicted.append(model.name)
        free_bytes += model.size_bytes
        if need_bytes <= free_bytes:
            break
    return evicted
