"""The simulated cluster's free resources, in the trace's units (milli CPU, MiB, GPU milli)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bench.placement.trace import MAX_GPUS_PER_NODE, MILLI, Nodes, Tasks


class Task(NamedTuple):
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU
    gpu_spec: str  # "" = any model

    @property
    def shares_gpu(self) -> bool:
        return self.num_gpu == 1 and self.gpu_milli < MILLI


def task_at(tasks: Tasks, i: int) -> Task:
    return Task(
        int(tasks.cpu_milli[i]),
        int(tasks.memory_mib[i]),
        int(tasks.num_gpu[i]),
        int(tasks.gpu_milli[i]),
        tasks.gpu_spec[i],
    )


class Cluster:
    """Free CPU, memory and per-GPU milli of every node; `version[n]` counts changes to node n."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.model = nodes.model_index
        self.cpu_left = nodes.cpu_milli.copy()
        self.memory_left = nodes.memory_mib.copy()
        slots = np.arange(MAX_GPUS_PER_NODE)[None, :]
        # Slots a node lacks stay at 0 idle milli: they fit nothing and count for nothing.
        self.gpu_left = np.where(slots < nodes.gpus[:, None], MILLI, 0).astype(np.int64)
        self.version = np.zeros(len(nodes.names), dtype=np.int64)
        self.allocated_milli = 0

    def model_allowed(self, task: Task) -> np.ndarray:
        if not task.gpu_spec or task.num_gpu == 0:
            return np.ones(len(self.model), dtype=bool)
        wanted = set(task.gpu_spec.split("|"))
        allowed = np.array([m in wanted for m in self.nodes.model_names], dtype=bool)
        return allowed[self.model]

    def feasible(self, task: Task, among: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Which nodes (of `among`) can take the task: CPU, memory, GPU model and GPU share."""
        ok = (self.cpu_left[among] >= task.cpu_milli) & (self.memory_left[among] >= task.memory_mib)
        if task.num_gpu == 0:
            return ok
        ok &= self.model_allowed(task)[among]
        if task.shares_gpu:
            return ok & (self.gpu_left[among] >= task.gpu_milli).any(axis=1)
        return ok & ((self.gpu_left[among] == MILLI).sum(axis=1) >= task.num_gpu)

    def whole_gpus(self, node: int, count: int) -> tuple[int, ...]:
        """The first `count` fully idle GPU slots of a node (the simulator's choice for them)."""
        return tuple(int(s) for s in np.flatnonzero(self.gpu_left[node] == MILLI)[:count])

    def place(self, node: int, slots: tuple[int, ...], task: Task) -> None:
        """Take the task's resources on `node` and its GPU `slots`; refuses any over-commit."""
        if len(slots) != task.num_gpu or len(set(slots)) != len(slots):
            raise AssertionError(f"task needs {task.num_gpu} distinct GPUs, got slots {slots}")
        if self.cpu_left[node] < task.cpu_milli or self.memory_left[node] < task.memory_mib:
            raise AssertionError(f"node {node} lacks CPU or memory for {task}")
        if task.num_gpu and not self.model_allowed(task)[node]:
            raise AssertionError(f"node {node}'s GPU model is not allowed for {task}")
        for slot in slots:
            if slot >= self.nodes.gpus[node] or self.gpu_left[node, slot] < task.gpu_milli:
                raise AssertionError(f"GPU {slot} of node {node} cannot take {task.gpu_milli}m")
        self.cpu_left[node] -= task.cpu_milli
        self.memory_left[node] -= task.memory_mib
        for slot in slots:
            self.gpu_left[node, slot] -= task.gpu_milli
        self.allocated_milli += task.num_gpu * task.gpu_milli
        self.version[node] += 1
