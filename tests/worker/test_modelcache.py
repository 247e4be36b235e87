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


def _lora(name: str, base: str, gib: int, used: float, in_use: int = 0, pinned: bool = False) -> CachedModel:
    return CachedModel(name, gib * GIB, used, in_use, pinned, base=base)


@pytest.mark.parametrize(
    ("cached", "need", "free", "want"),
    [
        # a LoRA is detached alone when that is enough (each use of a LoRA uses its base too,
        # so a base is used at least as recently as its LoRAs)
        ([_m("sd", 4, 3), _lora("style", "sd", 1, 2)], 1 * GIB, 0, ["style"]),
        # evicting the base detaches its LoRAs, listed before it, each counted once
        ([_m("sd", 4, 1), _lora("b", "sd", 1, 5), _lora("a", "sd", 1, 6)], 6 * GIB, 0, ["a", "b", "sd"]),
        ([_m("sd", 4, 1), _lora("a", "sd", 1, 6), _m("x", 2, 3)], 5 * GIB, 0, ["a", "sd"]),
        # a base whose LoRA runs is never evicted: only the other idle model goes
        ([_m("sd", 4, 1), _lora("a", "sd", 1, 6, in_use=1), _m("x", 2, 3)], 2 * GIB, 0, ["x"]),
        ([_m("sd", 4, 1), _lora("a", "sd", 1, 6, in_use=1), _m("x", 2, 3)], 3 * GIB, 0, None),
        # nor one with a pinned LoRA
        ([_m("sd", 4, 1), _lora("a", "sd", 1, 6, pinned=True)], 4 * GIB, 0, None),
        # a LoRA whose base is busy may still be detached
        ([_m("sd", 4, 1, in_use=1), _lora("a", "sd", 1, 6)], 1 * GIB, 0, ["a"]),
    ],
)
def test_choose_evictions_with_loras_on_a_base(cached, need, free, want):
    assert choose_evictions(cached, need, free) == want


def test_evictable_bytes_counts_a_base_only_when_its_loras_may_go():
    base, lora = _m("sd", 4, 1), _lora("a", "sd", 1, 2)
    assert evictable_bytes([base, lora]) == 5 * GIB
    assert evictable_bytes([base, _lora("a", "sd", 1, 2, in_use=1)]) == 0
    assert evictable_bytes([_m("sd", 4, 1, in_use=1), lora]) == 1 * GIB
