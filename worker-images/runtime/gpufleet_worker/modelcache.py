"""The model cache policy: which cached models make room for a new one. Pure functions.

One rule serves both caches a worker keeps: models resident in a GPU's memory (sized in VRAM
bytes) and model files in its disk cache (sized in bytes on disk). A model in use (a run
needs it, or it is being loaded) or pinned (``preload``) is never evicted; among the others
the least recently used goes first. A model attached to a base (a LoRA on its pipeline) may
be detached alone; evicting a base detaches every model attached to it, so a base is evicted
only when those may go too. The worker reports ``evictable_bytes`` from the same rule, so the
operator's placement and the benchmarks count exactly what the worker would free.
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
    base: str | None = None  # the model this one is attached to (a LoRA's base pipeline)

    @property
    def evictable(self) -> bool:
        """Idle and not pinned; a base also needs its attached models to be (`evictable_names`)."""
        return self.in_use == 0 and not self.pinned


def evictable_names(cached: Iterable[CachedModel]) -> set[str]:
    """The models the cache may evict: idle, unpinned, and for a base, with every model
    attached to it idle and unpinned too (they go with it)."""
    models = list(cached)
    held = {m.base for m in models if m.base is not None and not m.evictable}
    return {m.name for m in models if m.evictable and m.name not in held}


def evictable_bytes(cached: Iterable[CachedModel]) -> int:
    """Bytes the cache could free for a new model."""
    models = list(cached)
    free = evictable_names(models)
    return sum(model.size_bytes for model in models if model.name in free)


def choose_evictions(cached: Sequence[CachedModel], need_bytes: int, free_bytes: int) -> list[str] | None:
    """Models to evict, least recently used first, so that ``need_bytes`` fit; None when no
    set of evictable models frees enough. Evicts nothing when ``need_bytes`` already fit. A
    chosen base brings the models attached to it, listed just before it."""
    if need_bytes <= free_bytes:
        return []
    if need_bytes > free_bytes + evictable_bytes(cached):
        return None
    allowed = evictable_names(cached)
    attached: dict[str, list[CachedModel]] = {}
    for model in cached:
        if model.base is not None:
            attached.setdefault(model.base, []).append(model)
    evicted: list[str] = []
    for model in sorted((m for m in cached if m.name in allowed), key=lambda m: (m.last_used, m.name)):
        if model.name in evicted:
            continue
        for unit in [*sorted(attached.get(model.name, ()), key=lambda m: m.name), model]:
            if unit.name not in evicted:
                evicted.append(unit.name)
                free_bytes += unit.size_bytes
        if need_bytes <= free_bytes:
            break
    return evicted
