"""The paper's measure of GPU fragmentation, used to report every policy and inside FGD.

A node's fragmentation for one task type is the node's idle GPU share that the type cannot
use: if the node can host the type (enough CPU, an allowed GPU model and enough GPUs with
the share free), the idle share on GPUs too small for it; otherwise all of the node's idle
share. CPU-only types can use no GPU, so for them all idle share counts. A node's
fragmentation is the average over the "typical" task types, weighted by popularity; the
cluster's is the sum over nodes, and the fragmentation ratio is that over all idle share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from bench.placement.trace import Tasks

# The simulator's typical types: the most popular task shapes covering 95% of the trace.
POPULARITY_COVERAGE = 0.95


@dataclass(frozen=True, eq=False)
class TaskTypes:
    """Task shapes with their popularity (summing to 1)."""

    cpu_milli: np.ndarray  # int64[K]
    gpu_milli: np.ndarray  # int64[K]
    num_gpu: np.ndarray  # int64[K]
    gpu_spec: tuple[str, ...]
    popularity: np.ndarray  # float64[K]
    allowed: np.ndarray  # bool[K, models]: type k may use GPU model m (Nodes.model_names)


def typical_types(tasks: Tasks, model_names: tuple[str, ...]) -> TaskTypes:
    """The most popular shapes (CPU, GPU share, GPU count, GPU models) covering 95% of tasks."""
    counts = Counter(
        zip(
            tasks.cpu_milli.tolist(),
            tasks.gpu_milli.tolist(),
            tasks.num_gpu.tolist(),
            tasks.gpu_spec,
            strict=True,
        )
    )
    # Most popular first; equal counts in the simulator's order (larger shapes first).
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    kept, covered = [], 0
    for shape, count in ranked:
        kept.append((shape, count))
        covered += count
        if covered >= POPULARITY_COVERAGE * len(tasks):
            break
    allowed = np.array(
        [[not spec or m in spec.split("|") for m in model_names] for (_, _, _, spec), _ in kept],
        dtype=bool,
    )
    return TaskTypes(
        cpu_milli=np.array([s[0] for s, _ in kept], dtype=np.int64),
        gpu_milli=np.array([s[1] for s, _ in kept], dtype=np.int64),
        num_gpu=np.array([s[2] for s, _ in kept], dtype=np.int64),
        gpu_spec=tuple(s[3] for s, _ in kept),
        popularity=np.array([c for _, c in kept], dtype=np.float64) / covered,
        allowed=allowed,
    )


def node_fragmentation(
    gpu_left: np.ndarray, cpu_left: np.ndarray, model: np.ndarray, types: TaskTypes
) -> np.ndarray:
    """Fragmentation (GPU milli) of each node given its idle GPU milli per GPU slot.

    gpu_left: int64[M, S] idle milli per GPU (0 for slots the node does not have);
    cpu_left: int64[M]; model: int64[M] index of the node's GPU model.
    """
    idle = gpu_left.sum(axis=1).astype(np.float64)
    fits = gpu_left[:, :, None] >= types.gpu_milli[None, None, :]  # [M, S, K]
    fitting = fits.sum(axis=1)
    too_small = np.where(fits, 0, gpu_left[:, :, None]).sum(axis=1)  # [M, K]
    hosts = (
        (fitting >= types.num_gpu[None, :])
        & (cpu_left[:, None] >= types.cpu_milli[None, :])
        & types.allowed[:, model].T
        & (types.gpu_milli[None, :] > 0)
    )
    per_type = np.where(hosts, too_small, idle[:, None])
    return per_type @ types.popularity
