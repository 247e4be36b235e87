"""The paper's baselines, re-implemented as its simulator scores them.

Each policy picks a node among those that can take the task, then GPUs on it. Node scores
are the simulator's integer scores (0..100). The simulator's scheduler (a patched Kubernetes
1.20) breaks a tie between the best nodes by the smallest node name, and node names carry a
seeded random prefix: so a tie goes to the first node in a seeded random order, which is the
order of the nodes given to the replay.

- Random-fit: a random feasible node; for a GPU share, a random GPU with room.
- Best-fit: the node with the least CPU and GPU left after placing, half weight each
  (normalised by 128 cores and 8 GPUs); for a GPU share, the GPU with the least room left.
- FGD (Fragmentation Gradient Descent): the node and GPU whose choice least increases the
  node's fragmentation with respect to the typical task types; the simulator scores a
  node by sigmoid(decrease in fragmentation / 1000 milli) x 100, truncated to an integer.
Tasks asking for whole GPUs get a node's first fully idle GPUs under every policy.
"""

from __future__ import annotations

import numpy as np

from bench.placement.cluster import Cluster, Task
from bench.placement.fragmentation import TaskTypes, node_fragmentation
from bench.placement.trace import MAX_GPUS_PER_NODE, MILLI

Choice = tuple[int, tuple[int, ...]] | None  # (node, GPU slots) or no fit

MAX_SPEC_CPU = 128_000  # the simulator's normalisers for Best-fit
MAX_SPEC_GPU = 8_000
MAX_SCORE = 100


class RandomFit:
    name = "Random-fit"

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, cluster: Cluster, task: Task) -> Choice:
        nodes = np.flatnonzero(cluster.feasible(task))
        if len(nodes) == 0:
            return None
        node = int(nodes[self.rng.integers(len(nodes))])
        if task.shares_gpu:
            room = np.flatnonzero(cluster.gpu_left[node] >= task.gpu_milli)
            return node, (int(room[self.rng.integers(len(room))]),)
        return node, cluster.whole_gpus(node, task.num_gpu)


class BestFit:
    name = "Best-fit"

    def choose(self, cluster: Cluster, task: Task) -> Choice:
        feasible = cluster.feasible(task)
        if not feasible.any():
            return None
        cpu_after = (cluster.cpu_left - task.cpu_milli) / MAX_SPEC_CPU * 0.5
        gpu_after = (cluster.gpu_left.sum(axis=1) - task.num_gpu * task.gpu_milli) / MAX_SPEC_GPU * 0.5
        scores = np.trunc((1.0 - (cpu_after + gpu_after)) * MAX_SCORE).astype(np.int64)
        node = int(np.argmax(np.where(feasible, scores, -1)))  # the first best node
        if task.shares_gpu:
            left = cluster.gpu_left[node]
            room = np.where(left >= task.gpu_milli, left, MILLI + 1)
            return node, (int(np.argmin(room)),)
        return node, cluster.whole_gpus(node, task.num_gpu)


def _sigmoid_score(decrease: np.ndarray) -> np.ndarray:
    return np.trunc(MAX_SCORE / (1.0 + np.exp(-decrease / MILLI))).astype(np.int64)


class Fgd:
    """FGD with per-task-shape memo: a node's score is recomputed only after the node changes."""

    name = "FGD"

    def __init__(self, types: TaskTypes) -> None:
        self.types = types
        # task shape -> (score per node, -1 if infeasible; chosen share slot; node versions seen)
        self.memo: dict[Task, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def choose(self, cluster: Cluster, task: Task) -> Choice:
        n = len(cluster.version)
        scores, slots, seen = self.memo.setdefault(
            task, (np.full(n, -1, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64))
        )
        stale = np.flatnonzero(seen != cluster.version)
        if len(stale):
            scores[stale], slots[stale] = self.score(cluster, task, stale)
            seen[stale] = cluster.version[stale]
        if scores.max() < 0:
            return None
        node = int(np.argmax(scores))  # the first best node
        if task.shares_gpu:
            return node, (int(slots[node]),)
        return node, cluster.whole_gpus(node, task.num_gpu)

    def score(self, cluster: Cluster, task: Task, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (-1: cannot take the task) and, for a GPU share, the best GPU slot per node."""
        scores = np.full(len(nodes), -1, np.int64)
        slots = np.zeros(len(nodes), np.int64)
        ok = cluster.feasible(task, nodes)
        nodes = nodes[ok]
        if len(nodes) == 0:
            return scores, slots
        gpu, cpu, model = cluster.gpu_left[nodes], cluster.cpu_left[nodes], cluster.model[nodes]
        before = node_fragmentation(gpu, cpu, model, self.types)
        cpu_after = cpu - task.cpu_milli
        if task.shares_gpu:
            # One candidate per GPU slot: that slot's idle share reduced by the task's.
            after = np.repeat(gpu[:, None, :], MAX_GPUS_PER_NODE, axis=1)
            diagonal = np.arange(MAX_GPUS_PER_NODE)
            after[:, diagonal, diagonal] -= task.gpu_milli
            frag = node_fragmentation(
                after.reshape(-1, MAX_GPUS_PER_NODE),
                np.repeat(cpu_after, MAX_GPUS_PER_NODE),
                np.repeat(model, MAX_GPUS_PER_NODE),
                self.types,
            ).reshape(len(nodes), MAX_GPUS_PER_NODE)
            per_slot = np.where(gpu >= task.gpu_milli, _sigmoid_score(before[:, None] - frag), -1)
            scores[ok] = per_slot.max(axis=1)
            slots[ok] = per_slot.argmax(axis=1)  # the first slot among equal scores
            return scores, slots
        # Whole GPUs (or none): the first `num_gpu` fully idle slots are taken.
        idle = gpu == MILLI
        taken = idle & (np.cumsum(idle, axis=1) <= task.num_gpu)
        after = np.where(taken, 0, gpu)
        frag = node_fragmentation(after, cpu_after, model, self.types)
        scores[ok] = _sigmoid_score(before - frag)
        return scores, slots
