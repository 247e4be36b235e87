"""Throughput and peak memory of the built-in tiny-sd model through the worker's engine:
one job at a time (the baseline) against several jobs sharing the GPU, in the same run.

Each mode runs in a fresh process, so peak memory is that mode's own: peak resident memory
of the process on CPU, and on a GPU also torch's peak allocated VRAM and the largest
NVML "used" seen. Jobs go through admission, the sampler, PNG encoding and a local
artifact folder, as on a worker; the HTTP layer is left out.

    python bench/worker/bench_builtin.py                       # CPU, small images
    python bench/worker/bench_builtin.py --device cuda --size 512 --steps 30 --jobs 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_mode(args: argparse.Namespace) -> dict:
    """One mode in this process: submit ``jobs`` jobs, ``concurrency`` at a time."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    import torch

    from gpufleet_worker.artifacts import ArtifactStore
    from gpufleet_worker.config import WorkerConfig
    from gpufleet_worker.engine import Engine
    from gpufleet_worker.metrics import WorkerMetrics
    from gpufleet_worker.models import load_pipeline
    from gpufleet_worker.protocol import Phase, SubmitRequest
    from gpufleet_worker.runtime import open_gpus

    out = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    (out / "token").write_text("bench")
    config = WorkerConfig.model_validate(
        {
            "name": "bench",
            "tokenFile": str(out / "token"),
            "device": args.device,
            "maxJobsPerGpu": args.concurrency,
            "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "256Mi", "preload": True}],
            "simulatedGpu": {"memory": "64Gi"},
            "localOutputRoot": str(out),
        }
    )
    inventory, devices = open_gpus(config)
    engine = Engine(
        config=config,
        inventory=inventory,
        devices=devices,
        store=ArtifactStore(None, out),
        metrics=WorkerMetrics(),
        loader=load_pipeline,
    )
    engine.preload_models()
    on_gpu = args.device == "cuda"
    nvml_peak = 0
    sampling = threading.Event()

    def sample_nvml() -> None:
        nonlocal nvml_peak
        while not sampling.wait(0.05):
            for reading, _budget in engine.gpu_readings():
                nvml_peak = max(nvml_peak, reading.memory_used_bytes)

    def request(index: int) -> SubmitRequest:
        return SubmitRequest.model_validate(
            {
                "jobId": f"bench/job-{index}",
                "attempt": 1,
                "task": "text-to-image",
                "model": "tiny-sd",
                "input": {
                    "prompt": "a lighthouse at dusk",
                    "width": args.size,
                    "height": args.size,
                    "steps": args.steps,
                    "seed": index,
                    "numImages": args.images_per_job,
                },
                "vramBytes": 2**30,
                "outputUri": f"file://{out}/job-{index}/",
            }
        )

    def wait(run_id: str) -> None:
        while engine.get(run_id).phase is Phase.RUNNING:
            time.sleep(0.002)
        status = engine.get(run_id)
        if status.phase is not Phase.SUCCEEDED:
            raise RuntimeError(f"{run_id}: {status.phase} {status.reason} {status.message}")

    # Warm-up outside the timing: first kernels, allocator pools.
    engine.submit(request(0).model_copy(update={"job_id": "bench/warmup"}))
    wait("bench_warmup_1")
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = threading.Thread(target=sample_nvml, daemon=True)
    if on_gpu:
        sampler.start()

    started = time.perf_counter()
    pending = list(range(args.jobs))
    running: list[str] = []
    while pending or running:
        while pending and len(running) < args.concurrency:
            status, _ = engine.submit(request(pending.pop(0)))
            running.append(status.run_id)
        wait(running.pop(0))
    seconds = time.perf_counter() - started
    sampling.set()

    result = {
        "concurrency": args.concurrency,
        "jobs": args.jobs,
        "images": args.jobs * args.images_per_job,
        "seconds": seconds,
        "images_per_second": args.jobs * args.images_per_job / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if on_gpu:
        result["peak_torch_vram_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_nvml_used_mib"] = nvml_peak / 2**20
        result["gpu"] = engine.snapshot().gpus[0].product
    engine.shutdown()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--images-per-job", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once in the concurrent mode")
    parser.add_argument("--one-mode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one_mode:
        print(json.dumps(run_mode(args)))
        return 0

    results = []
    for concurrency in (1, args.concurrency):
        command = [
            sys.executable,
            __file__,
            "--one-mode",
            f"--device={args.device}",
            f"--size={args.size}",
            f"--steps={args.steps}",
            f"--jobs={args.jobs}",
            f"--images-per-job={args.images_per_job}",
            f"--concurrency={concurrency}",
        ]
        paths = [str(REPO / "operator"), str(REPO / "worker-images" / "runtime")]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env = {**os.environ, "PYTHONPATH": ":".join(paths)}
        output = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))

    print(
        f"built-in tiny-sd on {args.device}{' (' + results[0]['gpu'] + ')' if 'gpu' in results[0] else ''}: "
        f"{args.jobs} jobs x {args.images_per_job} image(s), {args.size}x{args.size}, {args.steps} steps"
    )
    columns = ["images_per_second", "seconds", "peak_rss_mib", "peak_torch_vram_mib", "peak_nvml_used_mib"]
    columns = [c for c in columns if c in results[0]]
    labels = ["one at a time (baseline)", f"{args.concurrency} concurrent"]
    print(f"{'':28}" + "".join(f"{c:>22}" for c in columns))
    for label, result in zip(labels, results, strict=True):
        print(f"{label:28}" + "".join(f"{result[c]:>22.2f}" for c in columns))
    speedup = results[1]["images_per_second"] / results[0]["images_per_second"]
    print(f"throughput, concurrent vs one at a time: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
