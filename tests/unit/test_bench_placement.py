"""The placement benchmark (bench/placement): its verdict (the honesty gate and gpufleet >= FGD
on every workload) and the typed workloads it derives from the default pod list."""

from __future__ import annotations

import numpy as np
import pytest

from bench.placement.__main__ import PAPER_DEFAULT, TRACES, Run, report
from bench.placement.trace import Nodes, Tasks, constrain

DEFAULT, SHARED, *TYPED = TRACES


def runs(trace: str, alloc: dict[str, list[float]]) -> list[Run]:
    return [
        Run(trace, 42 + i, policy, value, value, (0.0, 0.0, 0.0, 0.0), 100, 0.01)
        for policy, values in alloc.items()
        for i, value in enumerate(values)
    ]


def paper_like(gpufleet: list[float], fgd: list[float]) -> dict[str, list[float]]:
    return {
        "Random-fit": [PAPER_DEFAULT["Random-fit"]] * len(fgd),
        "Best-fit": [PAPER_DEFAULT["Best-fit"] + 0.1] * len(fgd),
        "FGD": fgd,
        "gpufleet": gpufleet,
    }


def test_it_passes_when_the_gate_holds_and_gpufleet_is_at_least_fgd_on_every_trace(capsys):
    alloc = paper_like(gpufleet=[95.4, 95.1], fgd=[95.2, 95.2])
    assert report(runs(DEFAULT, alloc) + runs(SHARED, alloc), [42, 43])
    out = capsys.readouterr().out
    assert "honesty gate: Best-fit within 0.5 of the paper: holds (0.10)" in out
    # The mean gap, and seed by seed: one seed above, one below.
    assert "gpufleet - FGD at 100% arrived: +0.05 points (per seed -0.10 to +0.20; above on 1 of 2)" in out


def test_it_fails_when_gpufleet_is_below_fgd_on_one_trace(capsys):
    ahead = paper_like(gpufleet=[95.4, 95.4], fgd=[95.2, 95.2])
    behind = paper_like(gpufleet=[94.0, 94.0], fgd=[94.1, 94.0])
    assert not report(runs(DEFAULT, ahead) + runs(SHARED, behind), [42, 43])
    assert "gpufleet - FGD at 100% arrived: -0.05 points" in capsys.readouterr().out


def test_it_fails_when_a_baseline_is_off_the_paper_however_well_gpufleet_does(capsys):
    alloc = paper_like(gpufleet=[99.0], fgd=[95.2])
    alloc["Random-fit"] = [PAPER_DEFAULT["Random-fit"] - 0.6]
    assert not report(runs(DEFAULT, alloc), [42])
    assert "honesty gate: Random-fit within 0.5 of the paper: FAILS (0.60)" in capsys.readouterr().out


def test_it_fails_when_gpufleet_is_below_fgd_on_a_typed_workload(capsys):
    ahead = paper_like(gpufleet=[95.4, 95.4], fgd=[95.2, 95.2])
    behind = {"FGD": [88.0, 88.2], "gpufleet": [88.1, 87.9]}
    assert TYPED
    assert not report(runs(DEFAULT, ahead) + runs(SHARED, ahead) + runs(TYPED[-1], behind), [42, 43])
    out = capsys.readouterr().out
    assert "with 50% of GPU tasks typed" in out
    assert "gpufleet - FGD at 100% arrived: -0.10 points (per seed -0.30 to +0.10; above on 1 of 2)" in out


# 14 nodes of 8 G2s with 96 CPUs, one of 2 T4s with 32 CPUs, one lone A10: 115 GPUs, of
# which the T4s are 1.7% and the A10 0.9%.
NODES = Nodes(
    names=tuple(f"n{i}" for i in range(16)),
    models=("T4", "A10", *["G2"] * 14),
    cpu_milli=np.array([32000, 96000] + [96000] * 14),
    memory_mib=np.array([2**19] * 16),
    gpus=np.array([2, 1] + [8] * 14),
)


def tasks_of(num_gpu: list[int], cpu: list[int]) -> Tasks:
    count = len(num_gpu)
    return Tasks(
        cpu_milli=np.array(cpu),
        memory_mib=np.array([1024] * count),
        num_gpu=np.array(num_gpu),
        gpu_milli=np.array([1000 if n else 0 for n in num_gpu]),
        gpu_spec=("",) * count,
    )


def test_typed_workloads_restrict_the_given_share_of_gpu_tasks_to_models_that_can_host_them():
    # 400 one-GPU tasks (half need more CPUs than a T4 node has), 100 eight-GPU tasks, 100
    # CPU-only tasks.
    tasks = tasks_of([1] * 400 + [8] * 100 + [0] * 100, [4000, 64000] * 200 + [8000] * 100 + [1000] * 100)
    typed = constrain(tasks, NODES, 0.5, seed=1)
    specs = typed.gpu_spec
    assert sum(bool(s) for s in specs) == 250  # half of the 500 GPU tasks
    assert not any(specs[500:])  # CPU-only tasks are never restricted
    for i, spec in enumerate(specs):
        models = spec.split("|") if spec else []
        assert len(models) <= 2 and "A10" not in models  # A10s: under 1% of the GPUs
        if tasks.num_gpu[i] == 8 or tasks.cpu_milli[i] > 32000:
            assert "T4" not in models  # no T4 node could host it
    one_gpu_small = [specs[i] for i in range(0, 400, 2) if specs[i]]
    assert {"T4", "G2", "G2|T4"} == set(one_gpu_small)  # one model or two, both seen
    # Everything else is the list as it was; the same seed gives the same list.
    assert (typed.cpu_milli == tasks.cpu_milli).all() and (typed.num_gpu == tasks.num_gpu).all()
    assert constrain(tasks, NODES, 0.5, seed=1).gpu_spec == specs
    assert constrain(tasks, NODES, 0.0, seed=1).gpu_spec == tasks.gpu_spec


def test_a_typed_share_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match=r"constrained share must be within 0\.\.1, got 1\.5"):
        constrain(tasks_of([1], [1000]), NODES, 1.5, seed=1)
