"""The Alibaba GPU trace ("openb") as arrays, and the seeded workload the paper's simulator replays.

Definitions follow the simulator of "Beware of Fragmentation" (USENIX ATC'23):
- `gpu_milli` is the share of one GPU a task asks for (1000 = a whole GPU); a task asks for
  `num_gpu` GPUs of that share (every multi-GPU task asks for whole GPUs).
- Tasks with `num_gpu == 0` are CPU-only: they take host CPU and memory, never a GPU, and add
  nothing to the arrived GPU demand.
- `gpu_spec` lists the GPU models a task may run on (`|`-separated; empty = any model).
- The workload for a seed: the trace's tasks in a seeded random order, then tasks drawn with
  replacement from the trace until the requested GPU capacity would pass 130% of the
  cluster's. Nothing departs; each task gets one placement attempt.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MILLI = 1000
MiB = 1024**2
GiB = 1024**3
DATA_DIR = Path(__file__).resolve().parents[2] / "../shared/data/alibaba-gpu-v2023"

# VRAM per GPU model, from the trace's README. G2 and G3 are undisclosed: we assume 32 GiB.
# Trace tasks ask for a share of the GPU, so no allocation figure depends on these sizes.
VRAM_BY_MODEL = {
    "P100": 16 * GiB,
    "T4": 16 * GiB,
    "V100M16": 16 * GiB,
    "V100M32": 32 * GiB,
    "A10": 24 * GiB,
    "G2": 32 * GiB,
    "G3": 32 * GiB,
}
MAX_GPUS_PER_NODE = 8
# `constrain` restricts tasks only to GPU models with at least this share of the GPUs (the
# trace's A10s, 2 of 6,212 GPUs, are left out).
MIN_MODEL_SHARE = 0.01


@dataclass(frozen=True, eq=False)
class Nodes:
    """The cluster: one row per node, in the file's order."""

    names: tuple[str, ...]
    models: tuple[str, ...]
    cpu_milli: np.ndarray  # int64[N]
    memory_mib: np.ndarray  # int64[N]
    gpus: np.ndarray  # int64[N]

    @property
    def total_gpu_milli(self) -> int:
        return int(self.gpus.sum()) * MILLI

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.models)))

    @property
    def model_index(self) -> np.ndarray:
        """int64[N]: each node's GPU model as an index into `model_names`."""
        index = {m: i for i, m in enumerate(self.model_names)}
        return np.array([index[m] for m in self.models], dtype=np.int64)

    def take(self, order: np.ndarray) -> Nodes:
        return Nodes(
            names=tuple(self.names[i] for i in order),
            models=tuple(self.models[i] for i in order),
            cpu_milli=self.cpu_milli[order],
            memory_mib=self.memory_mib[order],
            gpus=self.gpus[order],
        )


@dataclass(frozen=True, eq=False)
class Tasks:
    """Trace tasks: one row per task, in the file's order (sorted by name)."""

    cpu_milli: np.ndarray  # int64[T]
    memory_mib: np.ndarray  # int64[T]
    num_gpu: np.ndarray  # int64[T]
    gpu_milli: np.ndarray  # int64[T], per GPU
    gpu_spec: tuple[str, ...]  # "" = any model

    def __len__(self) -> int:
        return len(self.cpu_milli)

    @property
    def total_gpu_milli(self) -> np.ndarray:
        return self.num_gpu * self.gpu_milli

    def take(self, order: np.ndarray) -> Tasks:
        return Tasks(
            cpu_milli=self.cpu_milli[order],
            memory_mib=self.memory_mib[order],
            num_gpu=self.num_gpu[order],
            gpu_milli=self.gpu_milli[order],
            gpu_spec=tuple(self.gpu_spec[i] for i in order),
        )


def load_nodes(path: Path) -> Nodes:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["model"] not in VRAM_BY_MODEL:
            raise ValueError(f"{path}: node {row['sn']}: unknown GPU model {row['model']!r}")
        if not 0 < int(row["gpu"]) <= MAX_GPUS_PER_NODE:
            raise ValueError(f"{path}: node {row['sn']}: gpu must be 1..{MAX_GPUS_PER_NODE}")
    return Nodes(
        names=tuple(r["sn"] for r in rows),
        models=tuple(r["model"] for r in rows),
        cpu_milli=np.array([int(r["cpu_milli"]) for r in rows], dtype=np.int64),
        memory_mib=np.array([int(r["memory_mib"]) for r in rows], dtype=np.int64),
        gpus=np.array([int(r["gpu"]) for r in rows], dtype=np.int64),
    )


def load_tasks(path: Path) -> Tasks:
    with path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["name"])
    num_gpu = np.array([int(r["num_gpu"]) for r in rows], dtype=np.int64)
    # A GPU task asks for 1..1000 milli of each GPU; the simulator caps larger values at 1000.
    gpu_milli = np.array([min(int(r["gpu_milli"]), MILLI) for r in rows], dtype=np.int64)
    gpu_milli[num_gpu == 0] = 0
    bad = (num_gpu > 0) & (gpu_milli <= 0)
    if bad.any():
        raise ValueError(f"{path}: task {rows[int(np.argmax(bad))]['name']}: gpu_milli must be > 0")
    shared_multi = (num_gpu > 1) & (gpu_milli < MILLI)
    if shared_multi.any():
        name = rows[int(np.argmax(shared_multi))]["name"]
        raise ValueError(f"{path}: task {name}: a multi-GPU task must ask for whole GPUs")
    return Tasks(
        cpu_milli=np.array([int(r["cpu_milli"]) for r in rows], dtype=np.int64),
        memory_mib=np.array([int(r["memory_mib"]) for r in rows], dtype=np.int64),
        num_gpu=num_gpu,
        gpu_milli=gpu_milli,
        gpu_spec=tuple("|".join(m for m in r["gpu_spec"].split("|") if m) for r in rows),
    )


def workload(tasks: Tasks, nodes: Nodes, seed: int, demand_ratio: float = 1.3) -> Tasks:
    """The trace in a seeded random order, then seeded draws until `demand_ratio` of capacity.

    As in the paper's simulator, a draw stops the sequence when its per-GPU share would take
    the requested total past the target (so the sequence ends just below `demand_ratio`).
    """
    rng = np.random.default_rng(seed)
    target = demand_ratio * nodes.total_gpu_milli
    requested = int(tasks.total_gpu_milli.sum())
    if requested > target:
        raise ValueError(
            f"the trace already asks for {requested / nodes.total_gpu_milli:.1%} of the cluster's "
            f"GPU capacity, more than the {demand_ratio:.0%} to replay"
        )
    order = list(rng.permutation(len(tasks)))
    while True:
        pick = int(rng.integers(len(tasks)))
        if requested + tasks.gpu_milli[pick] > target:
            break
        requested += int(tasks.total_gpu_milli[pick])
        order.append(pick)
    return tasks.take(np.array(order, dtype=np.int64))


def constrain(tasks: Tasks, nodes: Nodes, share: float, seed: int) -> Tasks:
    """The tasks with `share` of the GPU tasks (chosen by `seed`) restricted to GPU models.

    Each chosen task may use one model or two (equally often), drawn uniformly from the models
    that hold at least `MIN_MODEL_SHARE` of the cluster's GPUs and of which some node could
    host it alone (enough GPUs, CPU and memory), so that no restriction is unsatisfiable from
    the start. Models are drawn uniformly, not by capacity: the scarce ones are asked for as
    often as the common one, as in real fleets where a job needs one architecture or memory
    class whatever the fleet holds most of.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"constrained share must be within 0..1, got {share}")
    rng = np.random.default_rng(seed)
    gpu_tasks = np.flatnonzero(tasks.num_gpu > 0)
    chosen = rng.permutation(gpu_tasks)[: round(share * len(gpu_tasks))]
    names = np.array(nodes.model_names)
    model = nodes.model_index
    gpus_per_model = np.bincount(model, weights=nodes.gpus, minlength=len(names))
    big_enough = (gpus_per_model >= MIN_MODEL_SHARE * nodes.gpus.sum())[model]
    specs = list(tasks.gpu_spec)
    for t in sorted(chosen.tolist()):
        hosts = (
            big_enough
            & (nodes.gpus >= tasks.num_gpu[t])
            & (nodes.cpu_milli >= tasks.cpu_milli[t])
            & (nodes.memory_mib >= tasks.memory_mib[t])
        )
        models = np.unique(model[hosts])
        count = min(len(models), int(rng.integers(1, 3)))
        specs[t] = "|".join(sorted(names[rng.choice(models, count, replace=False)]))
    return Tasks(tasks.cpu_milli, tasks.memory_mib, tasks.num_gpu, tasks.gpu_milli, tuple(specs))
