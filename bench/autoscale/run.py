"""Autoscaling benchmark: gpufleet's sizing against KEDA's defaults and an oracle, per trace.

    python -m bench.autoscale.run                     # all traces, seed 1 (about a minute)
    python -m bench.autoscale.run --traces bursty --seed 7 --interval 2
    python -m bench.autoscale.run --warm-queue-per-copy 1   # the placer's allowance, all policies

Each trace is replayed through the same simulated pool (bench/autoscale/sim.py) once per
policy (bench/autoscale/policies.py), and their figures are printed side by side. gpufleet
runs twice: with the pool's scale-down window (120 s, as in examples/workerpool.yaml) and with
the HPA's 300 s, so it can also be compared with KEDA at the same window.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from bench.autoscale.policies import Gpufleet, KedaHpa, Oracle
from bench.autoscale.sim import Pool, Result, Sim, Timing
from bench.autoscale.trace import TRACES, Trace
from gpufleet.core.placement import WARM_QUEUE_PER_COPY

HPA_SCALE_DOWN_WINDOW_S = 300.0

COLUMNS = (
    ("policy", "{:<13}"),
    ("p50 wait s", "{:>10.1f}"),
    ("p95 wait s", "{:>10.1f}"),
    ("p95 start s", "{:>11.1f}"),
    ("cold starts", "{:>11d}"),
    ("evictions", "{:>9d}"),
    ("warm %", "{:>6.1f}"),
    ("GPU-s used", "{:>10.0f}"),
    ("GPU-s idle", "{:>10.0f}"),
    ("killed", "{:>6d}"),
    ("peak", "{:>4d}"),
)


def simulate(
    trace: Trace,
    pool: Pool,
    timing: Timing,
    seed: int,
    interval_s: float,
    warm_queue_per_copy: int = WARM_QUEUE_PER_COPY,
) -> list[Result]:
    same_window = dataclasses.replace(pool, scale_down_stabilization_s=HPA_SCALE_DOWN_WINDOW_S)
    policies = (
        Gpufleet(pool, interval_s),
        Gpufleet(same_window, interval_s, name=f"gpufleet/{HPA_SCALE_DOWN_WINDOW_S:.0f}s"),
        KedaHpa(pool),
        Oracle(pool, trace, timing),
    )
    # The same seed for every policy: the same pod start delays and load times, drawn in order.
    return [
        Sim(trace, pool, timing, seed, warm_queue_per_copy=warm_queue_per_copy).run(p.name, p.loops())
        for p in policies
    ]


def row(r: Result) -> str:
    values = (
        r.policy,
        float(np.percentile(r.waits, 50)),
        float(np.percentile(r.waits, 95)),
        float(np.percentile(r.start_delays, 95)),
        r.cold_starts,
        r.evictions,
        100 * r.warm_hit_rate,
        r.gpu_s,
        r.idle_gpu_s,
        r.interrupted,
        r.peak_workers,
    )
    return "  ".join(fmt.format(v) for (_, fmt), v in zip(COLUMNS, values, strict=True))


def header() -> str:
    widths = [
        len(fmt.format(0 if fmt.endswith("d}") else "" if i == 0 else 0.0))
        for i, (_, fmt) in enumerate(COLUMNS)
    ]
    return "  ".join(
        f"{name:<{w}}" if i == 0 else f"{name:>{w}}"
        for i, ((name, _), w) in enumerate(zip(COLUMNS, widths, strict=True))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--traces", default=",".join(TRACES), help="comma-separated: " + ", ".join(TRACES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=5.0, help="gpufleet's control loop, seconds")
    parser.add_argument(
        "--warm-queue-per-copy",
        type=int,
        default=WARM_QUEUE_PER_COPY,
        help="the operator's placer: jobs queued per busy warm copy before another copy loads",
    )
    args = parser.parse_args()
    pool, timing = Pool(), Timing()
    print(
        f"pool: one {pool.gpu_vram // 2**30} GiB GPU per worker, maxJobsPerGPU {pool.max_jobs_per_gpu}, "
        f"replicas {pool.min_replicas}-{pool.max_replicas}, "
        f"targetJobsPerWorker {pool.target_jobs_per_worker}, "
        f"scale-down window {pool.scale_down_stabilization_s:.0f} s, "
        f"idle before zero {pool.idle_before_zero_s:.0f} s"
    )
    print(
        f"pod start {timing.pod_start_s[0]:.0f}-{timing.pod_start_s[1]:.0f} s; model load lognormal, "
        f"median {timing.load_median_s:g} s, p90 {timing.load_p90_s:.0f} s; "
        f"gpufleet decides every {args.interval:g} s"
    )
    print(
        "every worker's GPU memory: the worker's admission and cache rule; every policy's jobs placed "
        f"by the operator's dispatch round, warm-queue-per-copy {args.warm_queue_per_copy}"
    )
    for name in args.traces.split(","):
        trace = TRACES[name](args.seed)
        started = time.perf_counter()
        results = simulate(trace, pool, timing, args.seed, args.interval, args.warm_queue_per_copy)
        elapsed = time.perf_counter() - started
        alone = sum(j.work for j in trace.jobs) / 3600
        print(
            f"\n{name} (seed {args.seed}): {len(trace.jobs)} jobs over {trace.horizon / 3600:.0f} h, "
            f"{alone:.1f} GPU-h of inference alone; simulated in {elapsed:.0f} s"
        )
        print(header())
        for r in results:
            print(row(r))
            if r.unfinished:
                print(f"  {r.policy}: {r.unfinished} jobs unfinished at the end")


if __name__ == "__main__":
    main()
