"""Model-aware placement on a many-model trace: gpufleet's placer against a model-oblivious
least-loaded dispatcher and preload-everything-that-fits, on the same trace and fleet.

    python -m bench.models                          # 1 h of jobs, fleets of 12, 16 and 24 GPUs
    python -m bench.models --gpus 16 --hours 0.25 --seed 3

bench/models/README.md states what is modelled and records results.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.models.sim import Fleet, Gpufleet, LeastLoaded, Preload, Result, Sim
from bench.models.trace import MODELS, GiB, Trace, generate

HEADER = (
    f"{'gpus':>4} {'policy':<13} {'jobs':>6} {'warm-hit':>8} {'loads':>6} {'evictions':>9} "
    f"{'p50 wait+load s':>15} {'p95 wait+load s':>15} {'GPU-s loading':>13} {'GPU-s held':>10} "
    f"{'unstarted':>9} {'run s':>6}"
)


def replay(
    trace: Trace, fleet: Fleet, seed: int, per_copy: tuple[int, ...] = ()
) -> list[tuple[Result, float]]:
    """The three policies on the same trace, fleet and load-time draws (the same seed); gpufleet
    again for each extra `per_copy` (its placer's ``warm_queue_per_copy``)."""
    out = []
    makers = [lambda sim: Gpufleet(), lambda sim: LeastLoaded(), Preload]
    makers += [lambda sim, n=n: Gpufleet(n) for n in per_copy]
    for make in makers:
        sim = Sim(trace, fleet, seed)
        policy = make(sim)
        began = time.perf_counter()
        result = sim.run(policy.name, policy)
        out.append((result, time.perf_counter() - began))
    return out


def row(result: Result, seconds: float) -> str:
    p50, p95 = (np.percentile(result.waits, q) if len(result.waits) else float("nan") for q in (50, 95))
    return (
        f"{result.gpus:>4} {result.policy:<13} {len(result.waits):>6} {result.warm_rate:>8.1%} "
        f"{result.loads:>6} {result.evictions:>9} {p50:>15.1f} {p95:>15.1f} "
        f"{result.load_gpu_s:>13.0f} {result.held_gpu_s:>10.0f} {result.unfinished:>9} {seconds:>6.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="12,16,24", help="fleet sizes, comma-separated")
    parser.add_argument("--gpu-gib", type=int, default=24, help="VRAM per GPU, GiB")
    parser.add_argument("--max-jobs-per-gpu", type=int, default=1)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=1.2, help="jobs/s outside bursts")
    parser.add_argument("--models", type=int, default=MODELS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--warm-queue-per-copy", default="", help="also run gpufleet with these allowances (comma-separated)"
    )
    args = parser.parse_args(argv)
    trace = generate(args.seed, args.hours * 3600, args.rate, args.models)
    print(
        f"trace: seed {args.seed}, {len(trace.jobs)} jobs over {args.hours:g} h, {len(trace.models)} models, "
        f"{args.gpu_gib} GiB GPUs, {args.max_jobs_per_gpu} job(s) per GPU"
    )
    print(HEADER)
    for gpus in (int(n) for n in args.gpus.split(",")):
        fleet = Fleet(gpus, args.gpu_gib * GiB, args.max_jobs_per_gpu)
        extra = tuple(int(n) for n in args.warm_queue_per_copy.split(",") if n)
        results = replay(trace, fleet, args.seed, extra)
        for result, seconds in results:
            print(row(result, seconds), flush=True)
        ours, oblivious = results[0][0], results[1][0]
        ratio = np.percentile(ours.waits, 95) / max(np.percentile(oblivious.waits, 95), 1e-9)
        print(
            f"     gpufleet vs least-loaded: warm-hit {ours.warm_rate:.1%} vs {oblivious.warm_rate:.1%}; "
            f"p95 wait+load {ratio:.2f}x (target: warm-hit >= 90% and p95 <= 0.50x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
