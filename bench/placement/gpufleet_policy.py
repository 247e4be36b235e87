"""gpufleet's own placer (gpufleet.core.placement), driven through the trace.

Each trace node becomes a worker whose GPUs have the node model's VRAM (trace.VRAM_BY_MODEL)
and whose host reports its free CPU and memory. Each task becomes a job asking for its
GPU share as a share of each chosen GPU's VRAM, with its CPU and memory.

The mix of typical jobs is what an operator that has been running would have: the trace's
tasks observed once in their recorded order (FGD likewise takes its typical tasks from the
whole trace), then every arriving task observed before it is placed. Over a replay this long
the mix should not forget, so its half-life is far longer than the replay.
"""

from __future__ import annotations

from bench.placement.cluster import Cluster, Task, task_at
from bench.placement.trace import VRAM_BY_MODEL, MiB, Nodes, Tasks
from gpufleet.core.placement import Demand, DemandMix, Fleet, Gpu, Job, NoFit, Worker, commit, observe, place

# The trace has no per-GPU job limit: a share is at least 1 milli, so 1000 jobs never bind.
MAX_JOBS_PER_GPU = 1000
MIX_HALF_LIFE = 1_000_000.0  # tasks
MIX_MAX_KINDS = 256  # more than the trace's distinct demands


def workers_of(nodes: Nodes) -> list[Worker]:
    return [
        Worker(
            name=name,
            gpus=tuple(
                Gpu(
                    uuid=f"{name}/gpu{i}",
                    product=model,
                    vram_total=VRAM_BY_MODEL[model],
                    vram_free=VRAM_BY_MODEL[model],
                    max_jobs=MAX_JOBS_PER_GPU,
                )
                for i in range(int(gpus))
            ),
            cpu_free=int(cpu),
            memory_free=int(memory) * MiB,
        )
        for name, model, gpus, cpu, memory in zip(
            nodes.names, nodes.models, nodes.gpus, nodes.cpu_milli, nodes.memory_mib, strict=True
        )
    ]


def job_of(task: Task) -> Job:
    return Job(
        Demand(
            gpus=task.num_gpu,
            vram_share=task.gpu_milli,
            products=frozenset(task.gpu_spec.split("|")) if task.gpu_spec else frozenset(),
            cpu=task.cpu_milli,
            memory=task.memory_mib * MiB,
        )
    )


class Gpufleet:
    name = "gpufleet"

    def __init__(self, nodes: Nodes, history: Tasks) -> None:
        self.fleet = Fleet.of(workers_of(nodes))
        self.gpu_start = self.fleet.gpu_start
        mix = DemandMix(half_life=MIX_HALF_LIFE, max_kinds=MIX_MAX_KINDS)
        for i in range(len(history)):
            mix = observe(mix, job_of(task_at(history, i)).demand)
        self.mix = mix

    def choose(self, cluster: Cluster, task: Task) -> tuple[int, tuple[int, ...]] | None:
        job = job_of(task)
        self.mix = observe(self.mix, job.demand)
        placement = place(self.fleet, job, self.mix)
        if isinstance(placement, NoFit):
            return None
        self.fleet = commit(self.fleet, placement)
        node = placement.worker_index
        return node, tuple(g - int(self.gpu_start[node]) for g in placement.gpu_indices)
