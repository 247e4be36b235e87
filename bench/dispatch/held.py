"""What a held job costs the operator's memory, in-process: N jobs through real pool rounds
against the controller tests' fakes (tests/controller/fakes.py), their bodies decoded from
JSON as a watch delivers them, beside the baseline of holding each job as decoded (its body
and its parsed GenerationJob, nothing shared).

    python -m bench.dispatch.held               # 2,000 jobs
    python -m bench.dispatch.held --jobs 10000

Printed for the queue (no workers yet) and once every job has finished: bytes per job the
operator holds (its cache's bodies and parses, its pool's decisions, its per-job memory;
objects shared between jobs counted once) and the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import types
from typing import Any

from gpufleet.api.models import GenerationJob
from gpufleet.core import placement
from tests.controller.fakes import FakeKube, Harness

NOT_DATA = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class DecodingKube(FakeKube):
    """FakeKube whose answers are decoded from JSON, each on its own, as the API server's are."""

    def store(self, plural: str, body: dict) -> dict:
        return json.loads(json.dumps(super().store(plural, body)))


def deep_size(roots: list[Any]) -> int:
    """Bytes of everything ``roots`` reach (classes, modules and functions aside), each once."""
    seen: set[int] = set()
    total, stack = 0, list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, NOT_DATA):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        else:
            stack.extend(gc.get_referents(obj))
    return total


def per_job(fleet: Harness, count: int) -> tuple[float, float]:
    """Bytes per job the operator holds, and the baseline's (each body as decoded, parsed)."""
    op = fleet.op
    cache = op.cache
    held = deep_size([cache.jobs, cache._parsed, [p.decisions for p in op.pools.values()], op.jobs])
    decoded = [json.loads(json.dumps(body)) for body in cache.jobs.values()]
    baseline = deep_size([decoded, [GenerationJob.model_validate(body) for body in decoded]])
    return held / count, baseline / count


async def measure(count: int) -> dict[str, tuple[float, float]]:
    placement.warm_up()
    fleet = Harness()
    fleet.kube = fleet.op.kube = DecodingKube()  # type: ignore[assignment]
    try:
        fleet.pool(workers=0)
        for index in range(count):
            fleet.job(f"j{index:05d}", ttlSecondsAfterFinished=3600)
        for _ in range(3):  # first statuses, then decisions on them
            await fleet.round()
            await fleet.settle()
        queued = per_job(fleet, count)
        fleet.pool(workers=1, max_jobs_per_gpu=64)
        jobs = fleet.op.cache.jobs
        while any((body.get("status") or {}).get("phase") != "Succeeded" for body in jobs.values()):
            fleet.clock.now += 1
            await fleet.round()
            await fleet.settle()
        await fleet.round()  # decided once more as finished
        return {"queued": queued, "finished": per_job(fleet, count)}
    finally:
        await fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch.held", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.jobs))
    print(f"| {args.jobs:,} jobs | operator holds, bytes per job | as decoded (baseline) |")
    print("| --- | ---: | ---: |")
    for state, (held, baseline) in figures.items():
        print(f"| {state} | {held:,.0f} | {baseline:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
