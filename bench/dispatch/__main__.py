"""Dispatch benchmark: N tiny jobs through the operator on the local control plane, beside the
batch/v1 Job + pod path measured in the same run.

    python -m bench.dispatch                     # 1,000 and 10,000 jobs
    python -m bench.dispatch --jobs 500 2000     # other sizes
    python -m bench.dispatch --api-profiles DIR  # and CPU profiles of the API server

The pool's workers run bench/dispatch/fastworker.py (the worker protocol, runs end after
0.1 s, nothing computed), 4 workers x 32 slots, so the workers are never the limit. By default
the whole queue is created while the pool has no workers, every job has its first status, and
then the workers start: the rate is the drain of N queued jobs. With --arriving, jobs are
created while the workers run. For each size it prints the dispatch rate (jobs that reached
Dispatched per second, from the first to the last), the wait for dispatch p50/p95/p99 (from
creation, or from the workers' start if later), create -> first status p50/p95, API requests per job
by verb and resource (the API server's own counters), the operator's CPU seconds and peak RSS, and
the CPU seconds the API server and etcd used meanwhile (each row; per job, each apart).
The baseline: N batch/v1 Jobs whose pods land on simulated nodes (no process runs), timed
from create to pod Running, with the same counters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client, watch

from gpufleet.api.models import GROUP, VERSION
from gpufleet.localcluster import simnodes
from gpufleet.localcluster.cluster import LocalCluster
from gpufleet.localcluster.fleet import OperatorProcess, apply_crds, install_operator_identity
from gpufleet.localcluster.waiting import WaitTimeout, wait_for

NAMESPACE = "bench"
WORKERS, SLOTS = 4, 32
BASELINE_NODES = 4
REPO = Path(__file__).resolve().parents[2]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def request_counts(api: client.ApiClient) -> dict[str, float]:
    """The API server's apiserver_request_total, summed by 'verb resource[/subresource]'."""
    response = api.call_api("GET", f"{api.configuration.host}/metrics")
    response.read()
    counts: dict[str, float] = {}
    for line in (response.data or b"").decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        key = f"{labels.get('verb')} {labels.get('resource')}" + (
            f"/{labels['subresource']}" if labels.get("subresource") else ""
        )
        counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def rounds(operator: OperatorProcess) -> tuple[float, float]:
    """How many pool rounds the operator has run, and their seconds in all (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("gpufleet_round_seconds_count{"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gpufleet_round_seconds_sum{"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total


def timings(created: dict[str, float], started: dict[str, float], released: float = 0.0) -> dict[str, float]:
    """Rate from the first start to the last, the client's create rate, and percentiles of the
    wait from creation (or from ``released``, when workers were let in, if later) to start."""
    times = sorted(started.values())
    waits = [started[n] - max(created[n], released) for n in created]
    return {
        "jobs": len(created),
        "rate": (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else float("inf"),
        "create_rate": len(created) / (max(created.values()) - min(created.values()) or 1),
        "p50": percentile(waits, 0.5),
        "p95": percentile(waits, 0.95),
        "p99": percentile(waits, 0.99),
    }


def per_job(before: dict[str, float], after: dict[str, float], jobs: int, resources: tuple[str, ...]) -> dict:
    return {
        key: round((after.get(key, 0) - before.get(key, 0)) / jobs, 2)
        for key in sorted(after)
        if key.split(" ")[0] in ("POST", "PATCH", "PUT", "DELETE", "APPLY")
        and key.split(" ")[1].split("/")[0] in resources
        and after.get(key, 0) - before.get(key, 0) > 0
    }


class Sampler:
    """Peak RSS and CPU seconds of a process tree while a phase runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()
        self.cpu_start = self.cpu()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def tree(self) -> list[psutil.Process]:
        return [self.process, *self.process.children(recursive=True)]

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.tree())

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.peak = max(self.peak, sum(p.memory_info().rss for p in self.tree()))

    def finish(self) -> tuple[float, int]:
        self.stop.set()
        self.thread.join()
        return self.cpu() - self.cpu_start, self.peak


def control_plane_cpu(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds the API server and etcd have used so far: what each write costs them bounds
    the rate on a machine they share with the operator."""
    processes = cluster.control_plane.processes
    return {n: sum(psutil.Process(processes[n].pid).cpu_times()[:2]) for n in ("kube-apiserver", "etcd")}


def control_plane_used(cluster: LocalCluster, before: dict[str, float]) -> dict[str, float]:
    now = control_plane_cpu(cluster)
    return {
        "api_cpu": now["kube-apiserver"] - before["kube-apiserver"],
        "etcd_cpu": now["etcd"] - before["etcd"],
    }


QUIET_CORES = 0.15  # the cluster is settled when all its processes use less than this together
QUIET_WINDOW_SECONDS = 3.0


def wait_quiet(cluster: LocalCluster, operator: OperatorProcess, timeout: float = 180) -> str:
    """Waits until the control plane, the kubelet stand-in and the operator together use less
    than QUIET_CORES over QUIET_WINDOW_SECONDS, so that no row measures what the one before
    left running (the garbage collector deleting the baseline's Jobs and pods, say). Says how
    long that took, or that it did not happen (the row runs anyway)."""
    pids = [p.pid for p in cluster.control_plane.processes.values()]
    pids += [p.pid for p in (cluster.kubelet, operator.process) if p is not None]
    processes = [psutil.Process(pid) for pid in pids]

    def used() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    started = time.monotonic()

    def cores() -> float:
        before = used()
        time.sleep(QUIET_WINDOW_SECONDS)
        return (used() - before) / QUIET_WINDOW_SECONDS

    try:
        wait_for(cores, lambda c: c < QUIET_CORES, timeout, interval=0, what="the cluster to settle")
    except WaitTimeout as error:
        return f"not settled: {error}"
    return f"settled in {time.monotonic() - started:.0f} s"


class ApiProfiler:
    """CPU profiles of the API server while a row runs, one per PROFILE_SECONDS, written as
    DIRECTORY/TAG-NNN.pprof (``go tool pprof -top DIRECTORY/TAG-*.pprof`` merges them)."""

    PROFILE_SECONDS = 10

    def __init__(self, api: client.ApiClient, directory: Path | None, tag: str) -> None:
        self.api, self.directory, self.tag = api, directory, tag
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.thread.start()

    def run(self) -> None:
        assert self.directory is not None
        url = f"{self.api.configuration.host}/debug/pprof/profile?seconds={self.PROFILE_SECONDS}"
        index = 0
        while not self.stop.is_set():
            response = self.api.call_api("GET", url, _request_timeout=self.PROFILE_SECONDS + 30)
            response.read()
            (self.directory / f"{self.tag}-{index:03d}.pprof").write_bytes(response.data or b"")
            index += 1

    def finish(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(self.PROFILE_SECONDS + 40)


def watch_times(list_call: Any, args: tuple, seen: Any, stop: threading.Event) -> threading.Thread:
    """Calls ``seen(object, monotonic time)`` for each watch event until ``stop``."""

    def run() -> None:
        version = None  # each new watch resumes where the last ended: without, the API server
        # would send every object again each 30 s, at 10,000 jobs a load of its own
        while not stop.is_set():
            stream = watch.Watch()
            try:
                resume = {"resource_version": version} if version else {}
                for event in stream.stream(list_call, *args, timeout_seconds=30, **resume):
                    seen(event["object"], time.monotonic())
                    if stop.is_set():
                        break
                version = stream.resource_version
            except client.ApiException:
                version = None  # an expired resourceVersion: list and watch again
            finally:
                stream.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def create_all(count: int, create: Any) -> dict[str, float]:
    created: dict[str, float] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        name = create(index)
        with lock:
            created[name] = time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    return created


def set_workers(custom: client.CustomObjectsApi, replicas: int) -> None:
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "workerpools", "fast", {"spec": {"replicas": replicas}}
    )
    wait_for(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workerpools", "fast"),
        lambda pool: (pool.get("status") or {}).get("readyReplicas", 0) == replicas,
        300,
        interval=0.5,
        what=f"{replicas} fast workers ready",
    )


def run_gpufleet(
    cluster: LocalCluster,
    operator: OperatorProcess,
    count: int,
    tag: str,
    prequeue: bool,
    profiles: Path | None = None,
) -> dict:
    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    first_status: dict[str, float] = {}
    dispatched: dict[str, float] = {}
    succeeded: dict[str, float] = {}
    created: dict[str, float] = {}

    def seen(job: dict, at: float) -> None:
        name = job["metadata"]["name"]
        if not name.startswith(tag):
            return
        phase = (job.get("status") or {}).get("phase")
        if phase:
            first_status.setdefault(name, at)
        if phase in ("Dispatched", "Running", "Succeeded"):
            dispatched.setdefault(name, at)
        if phase == "Succeeded":
            succeeded.setdefault(name, at)

    stop = threading.Event()
    watcher = watch_times(
        custom.list_namespaced_custom_object, (GROUP, VERSION, NAMESPACE, "generationjobs"), seen, stop
    )
    before = request_counts(api)
    rounds_before = rounds(operator)
    sampler = Sampler(operator.process.pid)  # type: ignore[union-attr]
    control_before = control_plane_cpu(cluster)
    profiler = ApiProfiler(api, profiles, tag)

    def create(index: int) -> str:
        name = f"{tag}-{index:05d}"
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "generationjobs", job_manifest(name)
        )
        return name

    queued_peak = float("nan")
    if prequeue:
        set_workers(custom, 0)
    started = released = time.monotonic()
    created = create_all(count, create)
    if prequeue:
        # The whole queue is in (and has said so) before any worker takes a job.
        wait_for(lambda: len(first_status), lambda n: n >= count, 3600, interval=1, what="first statuses")
        released = time.monotonic()
        queued_peak = sampler.peak  # while the queue filled: every job held, none run yet
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "workerpools", "fast", {"spec": {"replicas": WORKERS}}
        )
    wait_for(lambda: len(succeeded), lambda n: n >= count, 3600, interval=1, what=f"{count} jobs succeeded")
    elapsed = time.monotonic() - started
    cpu, peak = sampler.finish()
    control = control_plane_used(cluster, control_before)
    profiler.finish()
    after = request_counts(api)
    rounds_after = rounds(operator)
    stop.set()
    watcher.join(35)
    first_waits = [first_status[n] - created[n] for n in created]
    return {
        "system": "gpufleet, queued first" if prequeue else "gpufleet",
        **timings(created, dispatched, released),
        "first_status_p50": percentile(first_waits, 0.5),
        "first_status_p95": percentile(first_waits, 0.95),
        "seconds": elapsed,
        "writes": per_job(before, after, count, ("generationjobs", "events", "pods")),
        "cpu": cpu,
        **control,
        "peak_rss_mb": peak / 2**20,
        "queued_rss_mb": queued_peak / 2**20,
        "rounds": rounds_after[0] - rounds_before[0],
        "round_seconds": rounds_after[1] - rounds_before[1],
    }


def job_manifest(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GenerationJob",
        "metadata": {"name": name},
        "spec": {
            "poolRef": {"name": "fast"},
            "task": "text-to-image",
            "model": "tiny-sd",
            "input": {"prompt": "a dot", "width": 64, "height": 64, "steps": 1, "seed": 1},
            "vram": "64Mi",
            "output": {"uri": "s3://bench-artifacts/out/"},
            "ttlSecondsAfterFinished": 3600,
        },
    }


def run_batch(cluster: LocalCluster, count: int, tag: str) -> dict:
    api = cluster.api_client()
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    running: dict[str, float] = {}

    def seen(pod: Any, at: float) -> None:
        job = (pod.metadata.labels or {}).get("job-name", "")
        if job.startswith(tag) and pod.status and pod.status.phase == "Running":
            running.setdefault(job, at)

    stop = threading.Event()
    watcher = watch_times(core.list_namespaced_pod, (NAMESPACE,), seen, stop)
    before = request_counts(api)

    def create(index: int) -> str:
        name = f"{tag}-{index:05d}"
        batch.create_namespaced_job(NAMESPACE, batch_manifest(name))
        return name

    started = time.monotonic()
    control_before = control_plane_cpu(cluster)
    created = create_all(count, create)
    wait_for(lambda: len(running), lambda n: n >= count, 3600, interval=1, what=f"{count} Job pods running")
    elapsed = time.monotonic() - started
    control = control_plane_used(cluster, control_before)
    after = request_counts(api)
    stop.set()
    watcher.join(35)
    batch.delete_collection_namespaced_job(NAMESPACE, propagation_policy="Background")
    # The next row starts once the garbage collector has removed the Jobs' pods: their deletion
    # would otherwise share the machine (and the write counts) with it.
    wait_for(
        lambda: core.list_namespaced_pod(NAMESPACE, label_selector="job-name").items,
        lambda pods: not pods,
        600,
        interval=1,
        what="the batch/v1 Jobs' pods removed",
    )
    return {
        "system": "batch/v1 Job",
        **timings(created, running),
        "first_status_p50": float("nan"),
        "first_status_p95": float("nan"),
        "seconds": elapsed,
        "writes": per_job(before, after, count, ("jobs", "pods", "events")),
        "cpu": float("nan"),
        **control,
        "peak_rss_mb": float("nan"),
    }


def batch_manifest(name: str) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"gpufleet.io/bench": "baseline"},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "run", "image": "busybox", "command": ["true"]}],
                }
            },
        },
    }


def start_pool(cluster: LocalCluster, shim_dir: Path) -> None:
    api = cluster.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    wait_for(lambda: core.read_namespaced_service_account("default", NAMESPACE), bool, 60, what="default SA")
    core.create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="bench-s3"),
            string_data={"AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"},
        ),
    )
    path = os.pathsep.join([str(shim_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        "workerpools",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkerPool",
            "metadata": {"name": "fast"},
            "spec": {
                "runtime": "builtin",
                "image": "ghcr.io/gpufleet/worker:0.1.0",
                "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "1Gi"}],
                "tasks": ["text-to-image"],
                "gpu": {"count": 1, "minMemory": "20Gi", "maxJobsPerGPU": SLOTS},
                "replicas": WORKERS,
                "template": {
                    "env": [{"name": "PATH", "value": path}, {"name": "PYTHONPATH", "value": str(REPO)}]
                },
            },
        },
    )
    wait_for(
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "workerpools", "fast"),
        lambda pool: (pool.get("status") or {}).get("readyReplicas") == WORKERS,
        300,
        interval=1,
        what=f"{WORKERS} fast workers ready",
    )


def write_shim(directory: Path) -> Path:
    """``gpufleet-worker`` that runs the fast worker: the pool's pods find it first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "gpufleet-worker"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bench.dispatch.fastworker "$@"\n')
    shim.chmod(0o755)
    return directory


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| system | jobs | dispatched/s | create/s | wait for dispatch p50 / p95 / p99 (s) "
        "| first status p50 / p95 (s) | operator CPU s | API server + etcd CPU s "
        "| operator peak RSS MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['system']} | {r['jobs']:,} | {r['rate']:.1f} | {r['create_rate']:.1f} | "
            f"{r['p50']:.1f} / {r['p95']:.1f} / {r['p99']:.1f} | "
            f"{r['first_status_p50']:.2f} / {r['first_status_p95']:.2f} | "
            f"{r['cpu']:.0f} | {r['api_cpu'] + r['etcd_cpu']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    print()
    for r in rows:
        print(f"API writes per job, {r['system']} at {r['jobs']:,}: {json.dumps(r['writes'])}")
        print(
            f"  CPU per job: API server {r['api_cpu'] / r['jobs'] * 1000:.1f} ms"
            f" + etcd {r['etcd_cpu'] / r['jobs'] * 1000:.1f} ms"
            + (f", operator {r['cpu'] / r['jobs'] * 1000:.1f} ms" if r["cpu"] == r["cpu"] else "")
        )
        if "rounds" in r:
            print(
                f"  pool rounds: {r['rounds']:.0f}, {r['round_seconds']:.1f} s in all "
                f"({r['round_seconds'] / max(r['rounds'], 1) * 1000:.0f} ms each, {r['seconds']:.0f} s run)"
            )
        if not math.isnan(r.get("queued_rss_mb", math.nan)):
            print(f"  operator peak RSS until every job was queued: {r['queued_rss_mb']:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--baseline-jobs", type=int, default=500, help="batch/v1 Jobs (pods on simulated nodes)"
    )
    parser.add_argument(
        "--api-profiles",
        type=Path,
        metavar="DIR",
        help="write CPU profiles of the API server during each gpufleet row to DIR",
    )
    parser.add_argument(
        "--arriving",
        action="store_true",
        help="jobs arrive while workers run (default: the whole queue is in before workers start)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-bench-dispatch-"))
    fleet = (
        *simnodes.DEFAULT_FLEET,
        *(
            dataclasses.replace(node, extra_labels={"gpufleet.io/bench": "baseline"})
            for node in simnodes.simulated_only_nodes(BASELINE_NODES, prefix="sim-batch")
        ),
    )
    rows = []
    with LocalCluster(workdir / "cluster", fleet, profiling=args.api_profiles is not None) as cluster:
        api = cluster.api_client()
        apply_crds(api)
        install_operator_identity(api)
        operator = OperatorProcess(
            api,
            cluster.server,
            cluster.control_plane.ca_cert,
            workdir / "operator",
            "http://127.0.0.1:9",
            "bench-s3",
        )
        operator.start()
        try:
            start_pool(cluster, write_shim(REPO / "_out" / "bench-dispatch-bin"))
            if args.baseline_jobs:  # 0: the gpufleet rows only
                rows.append(run_batch(cluster, args.baseline_jobs, "batch"))
            for index, count in enumerate(args.jobs):
                print(f"before {count:,} jobs: {wait_quiet(cluster, operator)}", flush=True)
                rows.append(
                    run_gpufleet(cluster, operator, count, f"gj{index}", not args.arriving, args.api_profiles)
                )
                print_table(rows)
        finally:
            operator.stop()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
