"""The workers' VRAM model cache through the operator on the local control plane: two workers
whose GPU holds two of six models take a skewed mix of jobs; every job succeeds, the workers
load and evict within their budget, and the hot model's jobs run warm."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from tests.operator.test_tasks_end_to_end import code_under_test

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3, pytest.mark.slow]

MODELS = [f"m{i}" for i in range(6)]
HOT = "m0"
GIB = 2**30


def skewed_models(count: int, seed: int = 16) -> list[str]:
    """Half the jobs for the hot model, the rest spread evenly over the others, shuffled."""
    cold = [MODELS[1 + i % (len(MODELS) - 1)] for i in range(count - count // 2)]
    names = [HOT] * (count // 2) + cold
    random.Random(seed).shuffle(names)
    return names


def test_two_workers_serve_six_models_from_a_vram_cache_and_the_hot_model_runs_warm(fleet):
    # A 16 GiB GPU holds two 6 GiB models beside two 1 GiB jobs: six models (36 GiB) must take turns.
    fleet.pool(
        "cache",
        replicas=2,
        models=[{"name": m, "source": "builtin://tiny-sd", "vram": "6Gi"} for m in MODELS],
        gpu={"count": 1, "minMemory": "16Gi", "maxJobsPerGPU": 2, "products": ["Tesla-V100-SXM2-16GB"]},
        **code_under_test(),
    )
    fleet.wait_ready_workers("cache", 2)
    names = skewed_models(60)
    for i, model in enumerate(names):
        fleet.job(f"j{i:02d}", pool="cache", model=model, steps=2)

    over_budget: list[str] = []
    done = threading.Event()

    def sample_inventories() -> None:
        while not done.is_set():
            for inventory in fleet.inventories("cache"):
                for gpu in inventory.gpus:
                    held = gpu.models_bytes + gpu.jobs_bytes
                    if held > gpu.memory_total_bytes or gpu.reserved_bytes > gpu.memory_total_bytes:
                        over_budget.append(f"{inventory.worker} {gpu.uuid}: {gpu}")
            done.wait(0.2)

    sampler = threading.Thread(target=sample_inventories, daemon=True)
    sampler.start()
    try:
        finished = [fleet.wait_phase(f"j{i:02d}", "Succeeded", "Failed", timeout=150) for i in range(60)]
    finally:
        done.set()
        sampler.join(5)
    failed = [
        (j["metadata"]["name"], j["status"].get("message"))
        for j in finished
        if j["status"]["phase"] != "Succeeded"
    ]
    assert failed == []
    assert over_budget == [], "a GPU held more than its memory"

    inventories = fleet.inventories("cache")
    assert len(inventories) == 2
    loads: Counter[str] = Counter()
    for inventory in inventories:
        loads.update({m.name: m.loads for m in inventory.models})
    evictions = sum(m.evictions for inv in inventories for m in inv.models)
    for inventory in inventories:
        (gpu,) = inventory.gpus
        assert len(gpu.models) <= 2 and gpu.models_bytes <= 12 * GIB  # never more resident than fits
        assert all(m.state == "Available" or m.resident_gpus for m in inventory.models)
    assert set(loads) == set(MODELS) and sum(loads.values()) >= len(MODELS)
    assert evictions >= 2  # six models through four places: at least two had to make room

    warm: Counter[tuple[str, bool]] = Counter()
    for job in finished:
        model_load = job["status"]["modelLoad"]
        assert model_load["warm"] or model_load["seconds"] >= 0
        warm[(job["spec"]["model"], model_load["warm"])] += 1
    hot_warm, hot_cold = warm[(HOT, True)], warm[(HOT, False)]
    print(f"loads {dict(loads)}, evictions {evictions}, warm/cold by model {dict(warm)}")
    assert hot_warm + hot_cold == 30
    assert hot_warm >= 18, f"the hot model ran warm {hot_warm} of 30 times; loads {dict(loads)}"
    assert hot_cold <= 2 * loads[HOT]  # each load served at most the two runs a GPU takes
