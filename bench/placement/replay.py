"""Replay a workload against a policy and read the paper's figures off the trajectory.

After every task the replay records the arrived GPU demand (the GPU milli of every task that
has arrived, placed or not), the allocated GPU milli, and the cluster's fragmentation and
idle GPU milli. A figure "at x% arrived" is, as in the paper's analysis scripts, the mean
over the events whose arrived demand rounds to x% of the cluster's GPU capacity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bench.placement.cluster import Cluster, Task, task_at
from bench.placement.fragmentation import TaskTypes, node_fragmentation
from bench.placement.trace import Nodes, Tasks


class Policy(Protocol):
    name: str

    def choose(self, cluster: Cluster, task: Task) -> tuple[int, tuple[int, ...]] | None: ...


@dataclass(frozen=True, eq=False)
class Trajectory:
    capacity_milli: int
    arrived_milli: np.ndarray  # int64[E], after each task
    allocated_milli: np.ndarray  # int64[E]
    fragmented_milli: np.ndarray  # float64[E]
    idle_milli: np.ndarray  # int64[E]
    decisions: int
    decision_seconds: float

    def _at(self, arrived_pct: int) -> np.ndarray:
        """Events whose arrived demand rounds to `arrived_pct` (else within one point of it)."""
        arrived = np.round(100.0 * self.arrived_milli / self.capacity_milli)
        events = np.flatnonzero(arrived == arrived_pct)
        if len(events) == 0:
            events = np.flatnonzero(np.abs(arrived - arrived_pct) <= 1)
        if len(events) == 0:
            raise ValueError(f"the replay never reached {arrived_pct}% arrived demand")
        return events

    def allocation_pct(self, arrived_pct: int) -> float:
        """Allocated GPU capacity (% of the cluster's) at `arrived_pct`% arrived demand."""
        events = self._at(arrived_pct)
        per_event = np.round(100.0 * self.allocated_milli[events] / self.capacity_milli, 2)
        return float(per_event.mean())

    def fragmentation_pct(self, arrived_pct: int) -> float:
        """Fragmented share of the idle GPU capacity (%) at `arrived_pct`% arrived demand."""
        events = self._at(arrived_pct)
        return float((100.0 * self.fragmented_milli[events] / self.idle_milli[events]).mean())


def replay(nodes: Nodes, tasks: Tasks, policy: Policy, types: TaskTypes) -> Trajectory:
    cluster = Cluster(nodes)
    frag = node_fragmentation(cluster.gpu_left, cluster.cpu_left, cluster.model, types)
    capacity = nodes.total_gpu_milli
    count = len(tasks)
    arrived = np.zeros(count, np.int64)
    allocated = np.zeros(count, np.int64)
    fragmented = np.zeros(count, np.float64)
    so_far, spent = 0, 0.0
    for i in range(count):
        task = task_at(tasks, i)
        so_far += task.num_gpu * task.gpu_milli
        started = time.perf_counter()
        choice = policy.choose(cluster, task)
        spent += time.perf_counter() - started
        if choice is not None:
            node, slots = choice
            cluster.place(node, slots, task)
            row = slice(node, node + 1)
            frag[node] = node_fragmentation(
                cluster.gpu_left[row], cluster.cpu_left[row], cluster.model[row], types
            )[0]
        arrived[i] = so_far
        allocated[i] = cluster.allocated_milli
        fragmented[i] = frag.sum()
    return Trajectory(
        capacity_milli=capacity,
        arrived_milli=arrived,
        allocated_milli=allocated,
        fragmented_milli=fragmented,
        idle_milli=capacity - allocated,
        decisions=count,
        decision_seconds=spent,
    )
