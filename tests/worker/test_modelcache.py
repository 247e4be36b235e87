import pytest

from gpufleet_worker.modelcache import CachedModel, choose_evictions, evictable_bytes

GIB = 2**30


def _m(name: str, gib: int, used: float, in_use: int = 0, pinned: bool = False) -> CachedModel:
    return CachedModel(name, gib * GIB, used, in_use, pinned)


@pytest.mark.parametrize(
    ("cached", "need", "free", "want"),
    [
        ([], 1, 1, []),  # fits already
        ([_m("a", 4, 1)], 4 * GIB, 0, ["a"]),
        # least recently used first, and only as many as needed
        ([_m("new", 2, 9), _m("old", 2, 1), _m("mid", 2, 5)], 3 * GIB, 0, ["old", "mid"]),
        ([_m("new", 2, 9), _m("old", 2, 1)], 2 * GIB, 1, ["old"]),
        # in use or pinned: never evicted, even when older
        ([_m("busy", 8, 0, in_use=1), _m("idle", 2, 5)], 2 * GIB, 0, ["idle"]),
        ([_m("pinned", 8, 0, pinned=True), _m("idle", 2, 5)], 2 * GIB, 0, ["idle"]),
        # nothing evictable frees enough
        ([_m("busy", 8, 0, in_use=1), _m("idle", 2, 5)], 4 * GIB, 1 * GIB, None),
        # a tie on last use is broken by name, so the choice is deterministic
        ([_m("b", 1, 1), _m("a", 1, 1)], 1 * GIB, 0, ["a"]),
    ],
)
def test_choose_evictions(cached, need, free, want):
    assert choose_evictions(cached, need, free) == want


def test_evictable_bytes_counts_only_idle_unpinned():
    cached = [_m("a", 1, 0), _m("b", 2, 0, in_use=1), _m("c", 4, 0, pinned=True)]
    assert evictable_bytes(cached) == 1 * GIB
