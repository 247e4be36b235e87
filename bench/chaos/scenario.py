"""The chaos scenario: jobs arrive while the operator and its workers are attacked.

Two operator replicas with leader election run behind recording API proxies (which also
answer a share of job status writes with 409 Conflict). While jobs arrive, each fault of the
plan lands while jobs are in progress: the leader SIGKILLed, frozen (SIGSTOP past its Lease,
then SIGCONT) and SIGTERMed; a worker process SIGKILLed and a worker pod deleted mid-run;
both replicas down while a pool is deleted, a job deleted and new jobs created. Then it
checks, from the replicas' writes as the proxies saw them, a watch of every job and the
workers' run logs: no job lost, none left non-terminal, no attempt run twice, no terminal
phase moved back, at most one replica writing at any time, every final status right.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

import gpufleet_worker.protocol as protocol
from gpufleet import labels
from gpufleet.api.models import GROUP, VERSION
from gpufleet.core.workerpod import token_secret_name
from gpufleet.localcluster.fleet import OPERATOR_NAMESPACE, OperatorProcess
from gpufleet.localcluster.kubelet import TERMINATED_LOGS
from gpufleet.localcluster.processes import pod_process_ids
from gpufleet.localcluster.waiting import WaitTimeout, wait_for

from .apiproxy import ApiProxy, Write

TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
LEASE = "gpufleet-operator"
POOL, SIDE_POOL = "sd", "side"
FAULTS = ("operator-kill", "freeze", "sigterm", "worker-kill", "pod-delete", "operator-down")
_ADMITTED = re.compile(r"run (\S+) admitted on ")


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int = 24
    submit_interval: float = 0.4
    faults: tuple[str, ...] = FAULTS
    conflict_rate: float = 0.2
    # Denoising steps and image side per job: long enough that a job is seen Running and a
    # fault lands mid-run even on a quiet machine.
    steps: int = 150
    size: int = 256
    lease_seconds: int = 4
    renew_deadline_seconds: float = 3
    retry_seconds: float = 1
    seed: int = 7
    timeout: float = 600


def lease_write(path: str) -> bool:
    """A write of a Lease (trying for it, renewing, releasing) rather than an act of a leader;
    creating one posts to the collection, whose path ends in ``/leases``."""
    return "/leases/" in path or path.endswith("/leases")


def overlaps(writes: list[Write]) -> tuple[list[str], list[str]]:
    """Writes of a replica incarnation after another had written since its own last write:
    (those the API server applied, those it refused). ``writes`` in arrival order, Leases out."""
    applied: list[str] = []
    refused: list[str] = []
    finished: set[str] = set()
    for before, after in itertools.pairwise(writes):
        if before.replica != after.replica:
            finished.add(before.replica)
            if after.replica in finished:
                (refused if after.status >= 400 else applied).append(
                    f"{after.replica} wrote {after.method} {after.path} ({after.status}) at "
                    f"{after.at:.2f} after {before.replica} wrote at {before.at:.2f}"
                )
    return applied, refused


@dataclass
class ChaosReport:
    jobs: int = 0
    deleted: list[str] = field(default_factory=list)
    phases: dict[str, str | None] = field(default_factory=dict)
    faults: Counter = field(default_factory=Counter)
    failover_seconds: list[tuple[str, float]] = field(default_factory=list)  # (fault, seconds)
    injected_conflicts: int = 0
    writes: int = 0
    runs_started: Counter = field(default_factory=Counter)  # run id -> admissions seen in logs
    reversals: list[str] = field(default_factory=list)
    interleavings: list[str] = field(default_factory=list)  # a deposed replica's write applied
    # A write that passed the replica's fence an instant before it froze reaches the API server
    # after it resumes; refused there (409 AlreadyExists/Conflict, 404), it changed nothing.
    stale_refused: list[str] = field(default_factory=list)
    wrong_status: list[str] = field(default_factory=list)
    deleted_runs_left: list[str] = field(default_factory=list)  # a deleted job's run still live
    sigterm_exit_codes: list[int | None] = field(default_factory=list)
    frozen_exit_codes: list[int | None] = field(default_factory=list)

    @property
    def lost(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p != "Succeeded")

    @property
    def duplicated(self) -> list[str]:
        return sorted(r for r, n in self.runs_started.items() if n > 1)

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"jobs not Succeeded: {[(n, self.phases[n]) for n in self.lost]}")
        if self.duplicated:
            found.append(f"attempts run more than once: {self.duplicated}")
        found += [f"terminal phase moved back: {r}" for r in self.reversals]
        found += [f"two replicas writing: {i}" for i in self.interleavings]
        found += [f"wrong final status: {w}" for w in self.wrong_status]
        found += [f"a deleted job's run was not stopped: {r}" for r in self.deleted_runs_left]
        if any(code != 0 for code in self.sigterm_exit_codes):
            found.append(f"SIGTERM exit codes {self.sigterm_exit_codes} (want 0)")
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "deleted_while_down": len(self.deleted),
            "deleted_runs_left": len(self.deleted_runs_left),
            "faults_landed": dict(self.faults),
            "injected_409": self.injected_conflicts,
            "writes": self.writes,
            "lost": len(self.lost),
            "duplicated_attempts": len(self.duplicated),
            "terminal_reversals": len(self.reversals),
            "replica_interleavings": len(self.interleavings),
            "stale_writes_refused": len(self.stale_refused),
            "failover_s": [(fault, round(s, 1)) for fault, s in self.failover_seconds],
            "retried_jobs": sum(1 for r in self.runs_started if not r.endswith("_1")),
        }


class Replica:
    """One operator replica behind its own proxy; each start is a new identity."""

    def __init__(self, name: str, make: Any, proxy: ApiProxy) -> None:
        self.name = name
        self.proxy = proxy
        self.process: OperatorProcess = make(proxy.url)
        self.starts = 0

    @property
    def identity(self) -> str:
        return f"{self.name}-{self.starts}"

    def start(self) -> None:
        self.starts += 1
        self.proxy.replica = self.identity
        self.process.identity = self.identity
        self.process.start()

    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid


class Chaos:
    def __init__(
        self,
        cluster: Any,
        namespace: str,
        bucket: str,
        s3: Any,
        make_operator: Any,
        workdir: Path,
        plan: ChaosPlan,
    ) -> None:
        """``make_operator(server)`` builds an OperatorProcess talking to ``server``."""
        self.cluster = cluster
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.leases = client.CoordinationV1Api(self.api)
        self.namespace = namespace
        self.bucket = bucket
        self.s3 = s3
        self.plan = plan
        self.workdir = workdir
        self.random = random.Random(plan.seed)
        self.report = ChaosReport()
        self.history: dict[str, list[str | None]] = {}
        self.created: list[str] = []
        self._stop_watch = threading.Event()
        self._submitted_all = threading.Event()
        lease_args = (
            "--lease-seconds",
            str(plan.lease_seconds),
            "--renew-deadline-seconds",
            str(plan.renew_deadline_seconds),
            "--retry-period-seconds",
            str(plan.retry_seconds),
        )
        self.replicas = [
            Replica(
                name,
                lambda server, name=name: make_operator(server, name, lease_args),
                ApiProxy(
                    name,
                    cluster.server,
                    cluster.control_plane.ca_cert,
                    conflict_rate=plan.conflict_rate,
                    seed=plan.seed + i,
                ).start(),
            )
            for i, name in enumerate(("replica-a", "replica-b"))
        ]
        # Replicas of one deployment share the key the pools' worker tokens derive from.
        shared_key = self.replicas[0].process.key_file.read_text()
        for replica in self.replicas[1:]:
            replica.process.key_file.write_text(shared_key)

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> ChaosReport:
        watcher = threading.Thread(target=self._watch_jobs, name="job-watch", daemon=True)
        watcher.start()
        try:
            for replica in self.replicas:
                replica.start()
            self._pool(POOL, replicas=2)
            self._pool(SIDE_POOL, replicas=1)
            self._wait_ready_workers(POOL, 2)
            submitter = threading.Thread(target=self._submit_all, name="submit", daemon=True)
            submitter.start()
            self._job("side-0", SIDE_POOL)
            self._job("side-1", SIDE_POOL)
            faults = list(self.plan.faults)
            self.random.shuffle(faults)
            for fault in faults:
                self._wait_some_job_running()
                getattr(self, "_" + fault.replace("-", "_"))()
            submitter.join(self.plan.timeout)
            self._wait_all_terminal()
            self._wait_deleted_runs_stopped()
        finally:
            self._stop_watch.set()
            for replica in self.replicas:
                if replica.process.alive():
                    self._resume(replica)
                    replica.process.stop()
            for replica in self.replicas:
                replica.proxy.stop()
        watcher.join(10)
        self._check()
        return self.report

    # --- faults ----------------------------------------------------------------------------

    def _operator_kill(self) -> None:
        leader = self._leader()
        old, at = leader.identity, time.time()
        os.killpg(leader.pid(), signal.SIGKILL)
        leader.process.process.stop(0)  # type: ignore[union-attr]
        self.report.faults["operator-kill"] += 1
        leader.start()
        self._measure_failover("operator-kill", old, at)

    def _freeze(self) -> None:
        leader = self._leader()
        at = time.time()
        os.killpg(leader.pid(), signal.SIGSTOP)
        try:
            # The fault has landed only once another replica leads while this one is frozen.
            self._measure_failover("freeze", leader.identity, at)
            self.report.faults["freeze"] += 1  # landed: another replica took over meanwhile
            # Jobs keep moving under the new leader while the old one is still frozen.
            time.sleep(self.plan.retry_seconds)
        finally:
            self._resume(leader)
        assert leader.process.process is not None
        code = wait_for(
            lambda: leader.process.process.popen.poll(),  # type: ignore[union-attr]
            lambda c: c is not None,
            30,
            what=f"{leader.identity} exits once resumed",
        )
        self.report.frozen_exit_codes.append(code)
        leader.process.process.stop(0)
        leader.start()

    def _sigterm(self) -> None:
        leader = self._leader()
        old, at = leader.identity, time.time()
        assert leader.process.process is not None
        self.report.sigterm_exit_codes.append(leader.process.process.stop(30))
        self.report.faults["sigterm"] += 1
        leader.start()
        self._measure_failover("sigterm", old, at)

    def _worker_kill(self) -> None:
        pod, _ = self._worker_with_run(POOL)
        pids = pod_process_ids(pod, "gpufleet-worker")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if pids:
            self.report.faults["worker-kill"] += 1

    def _pod_delete(self) -> None:
        def deleted() -> bool:
            # A job's status can still name a pod that an earlier fault took: find another.
            pod, _ = self._worker_with_run(POOL)
            try:
                self.core.delete_namespaced_pod(pod, self.namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
                return False
            return True

        wait_for(deleted, bool, 120, interval=0.5, what="a worker pod with a run in progress deleted")
        self.report.faults["pod-delete"] += 1

    def _operator_down(self) -> None:
        """Both replicas down; a pool deleted, a job deleted, jobs created; then both back."""
        for replica in self.replicas:
            os.killpg(replica.pid(), signal.SIGKILL)
            replica.process.process.stop(0)  # type: ignore[union-attr]
        live = [n for n in self.created if self.history.get(n, [None])[-1] not in TERMINAL]
        if live:
            victim = live[-1]
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "generationjobs", victim
            )
            self.report.deleted.append(victim)
        side_running = any(self.history.get(n, [None])[-1] == "Running" for n in ("side-0", "side-1"))
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "workerpools", SIDE_POOL)
        self.report.faults["pool-deleted-while-down" + ("-with-running-jobs" if side_running else "")] += 1
        self.report.faults["operator-down"] += 1
        for i in range(2):
            self._job(f"down-{self.report.faults['operator-down']}-{i}", POOL)
        for replica in self.replicas:
            replica.start()
        # The side pool's jobs must not stay Running for a pool that is gone...
        for name in ("side-0", "side-1"):
            wait_for(
                lambda name=name: self.history.get(name, [None])[-1],
                lambda phase: phase != "Running",
                60,
                what=f"{name} leaves Running once its pool is gone",
            )
        # ...and run once the pool is back.
        wait_for(
            lambda: self._pool(SIDE_POOL, replicas=1),
            bool,
            60,
            what="the side pool created again (its deletion finished)",
        )

    # --- helpers ---------------------------------------------------------------------------

    def _measure_failover(self, fault: str, old_identity: str, since: float) -> None:
        """Time from a fault of the leader ``old_identity`` until another identity holds the Lease."""

        def holder() -> str | None:
            lease = self.leases.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
            return lease.spec.holder_identity

        wait_for(holder, lambda h: bool(h) and h != old_identity, 60, interval=0.05, what="a new leader")
        self.report.failover_seconds.append((fault, time.time() - since))

    def _leader(self) -> Replica:
        def current() -> Replica | None:
            lease = self.leases.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
            return next(
                (r for r in self.replicas if r.identity == lease.spec.holder_identity and r.process.alive()),
                None,
            )

        return wait_for(current, bool, 60, what="a live leader")  # type: ignore[return-value]

    def _resume(self, replica: Replica) -> None:
        if replica.process.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replica.pid(), signal.SIGCONT)

    def _pool(self, name: str, replicas: int) -> dict | None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {
                "runtime": "builtin",
                "image": "ghcr.io/gpufleet/worker:0.1.0",
                "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "1Gi"}],
                "tasks": ["text-to-image"],
                "gpu": {"count": 1, "minMemory": "16Gi", "maxJobsPerGPU": 4},
                "replicas": replicas,
            },
        }
        try:
            return self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "workerpools", body
            )
        except ApiException as error:
            if error.status == 409:  # the old one is still being deleted
                return None
            raise

    def _job(self, name: str, pool: str) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GenerationJob",
            "metadata": {"name": name},
            "spec": {
                "poolRef": {"name": pool},
                "task": "text-to-image",
                "model": "tiny-sd",
                "input": {
                    "prompt": f"chaos {name}",
                    "width": self.plan.size,
                    "height": self.plan.size,
                    "steps": self.plan.steps,
                },
                "vram": "1Gi",
                "output": {"uri": f"s3://{self.bucket}/{self.namespace}/"},
                "retry": {"maxAttempts": 10, "backoffSeconds": 1},
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "generationjobs", body)
        self.created.append(name)

    def _submit_all(self) -> None:
        for i in range(self.plan.jobs):
            self._job(f"chaos-{i}", POOL)
            time.sleep(self.plan.submit_interval)
        self._submitted_all.set()

    def _watch_jobs(self) -> None:
        version = None
        while not self._stop_watch.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "generationjobs",
                    resource_version=version,
                    timeout_seconds=5,
                ):
                    job = event["object"]
                    version = job["metadata"]["resourceVersion"]
                    phases = self.history.setdefault(job["metadata"]["name"], [])
                    phase = (job.get("status") or {}).get("phase")
                    if not phases or phases[-1] != phase:
                        phases.append(phase)
            except ApiException as error:
                if error.status != 410:
                    raise
                version = None  # compacted: start again from a fresh list
            finally:
                stream.stop()

    def _wait_some_job_running(self) -> None:
        # Both replicas up first (the standby waiting for the Lease), so failover is measured
        # from a ready standby, as in a deployment with two Ready pods.
        for replica in self.replicas:
            wait_for(
                lambda replica=replica: (
                    httpx.get(
                        f"http://127.0.0.1:{replica.process.health_port}/healthz", timeout=2
                    ).status_code
                ),
                lambda code: code == 200,
                120,
                what=f"{replica.identity} answers /healthz",
            )

        def running() -> list[str]:
            # Faults still to land once every job has ended (a fast machine): one more job.
            live = [n for n in self.created if (self.history.get(n) or [None])[-1] not in TERMINAL]
            if not live and self._submitted_all.is_set():
                self._job(f"extra-{len(self.created)}", POOL)
            return [n for n, p in self.history.items() if p and p[-1] == "Running"]

        wait_for(running, bool, 120, what="a job in progress when the fault lands")

    def _wait_ready_workers(self, pool: str, count: int) -> None:
        def ready(pods: list[client.V1Pod]) -> bool:
            return (
                sum(
                    1
                    for p in pods
                    if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                )
                >= count
            )

        wait_for(lambda: self._pods(pool), ready, 180, what=f"{count} ready workers of {pool}")

    def _pods(self, pool: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"{labels.POOL}={pool}").items

    def _worker_with_run(self, pool: str) -> tuple[str, str]:
        """A worker pod of ``pool`` and a job running on it now (from the job's status)."""

        def find() -> tuple[str, str] | None:
            for job in self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "generationjobs"
            )["items"]:
                status = job.get("status") or {}
                if job["spec"]["poolRef"]["name"] != pool:
                    continue
                worker = (status.get("worker") or {}).get("pod")
                if status.get("phase") == "Running" and worker and status.get("progress", {}).get("step"):
                    return worker, job["metadata"]["name"]
            return None

        return wait_for(find, bool, 120, what="a worker with a run in progress")  # type: ignore[return-value]

    def _wait_all_terminal(self) -> None:
        expected = lambda: [n for n in self.created if n not in self.report.deleted]  # noqa: E731
        wait_for(
            lambda: {n: (self.history.get(n) or [None])[-1] for n in expected()},
            lambda phases: all(p in TERMINAL for p in phases.values()),
            self.plan.timeout,
            interval=1,
            what="every job terminal",
            describe=lambda phases: str({n: p for n, p in phases.items() if p not in TERMINAL}),
        )

    def _live_runs(self, pool: str) -> list[str]:
        """The run ids that the pool's live workers have not ended."""
        secret = self.core.read_namespaced_secret(token_secret_name(pool), self.namespace)
        headers = {
            protocol.AUTH_HEADER: protocol.auth_header_value(base64.b64decode(secret.data["token"]).decode())
        }
        live = []
        for pod in self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{labels.POOL}={pool}"
        ).items:
            if not pod.status.pod_ip or pod.metadata.deletion_timestamp:
                continue
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(
                    f"http://{pod.status.pod_ip}:8080{protocol.JOBS}", headers=headers, timeout=5
                )
                live += [
                    run.run_id
                    for run in protocol.JobList.model_validate_json(response.content).jobs
                    if run.phase
                    not in (protocol.Phase.SUCCEEDED, protocol.Phase.FAILED, protocol.Phase.CANCELLED)
                ]
        return live

    def _wait_deleted_runs_stopped(self) -> None:
        """Jobs carry no finalizer: a job deleted while no operator ran must still have its run
        stopped by the operator once it is back (its rounds cancel runs no job wants)."""
        deleted = {f"{self.namespace}_{name}_" for name in self.report.deleted}

        def left() -> list[str]:
            return [run for run in self._live_runs(POOL) if any(run.startswith(d) for d in deleted)]

        with contextlib.suppress(WaitTimeout):  # what is left is reported
            wait_for(left, lambda runs: not runs, 60, interval=1, what="deleted jobs' runs stopped")
        self.report.deleted_runs_left = left()

    # --- checks ----------------------------------------------------------------------------

    def _check(self) -> None:
        report = self.report
        report.jobs = len(self.created)
        for name in self.created:
            if name in report.deleted:
                continue
            phases = self.history.get(name) or [None]
            report.phases[name] = phases[-1]
            for i, phase in enumerate(phases[:-1]):
                if phase in TERMINAL:
                    report.reversals.append(f"{name}: {phases[i:]}")
                    break
        writes: list[Write] = sorted(
            (w for r in self.replicas for w in r.proxy.recorded()), key=lambda w: w.at
        )
        report.injected_conflicts = sum(1 for w in writes if w.injected)
        acting = [w for w in writes if not lease_write(w.path) and not w.injected]
        report.writes = len(acting)
        report.interleavings, report.stale_refused = overlaps(acting)
        report.runs_started = self._runs_started()
        for name, phase in report.phases.items():
            if phase == "Succeeded":
                report.wrong_status += self._status_problems(name)

    def _runs_started(self) -> Counter:
        prefix = f"{self.namespace}_"
        pods = self.cluster.workdir / "pods"
        counts: Counter = Counter()
        logs = [
            *pods.glob(f"{self.namespace}_*/*.log"),
            *pods.glob(f"{TERMINATED_LOGS}/{self.namespace}_*/*.log"),
        ]
        for log in logs:
            for match in _ADMITTED.finditer(log.read_text(errors="replace")):
                if match.group(1).startswith(prefix):
                    counts[match.group(1)] += 1
        return counts

    def _status_problems(self, name: str) -> list[str]:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "generationjobs", name)
        status = job["status"]
        problems = []
        if not status.get("artifacts"):
            problems.append(f"{name}: Succeeded without artifacts")
        for artifact in status.get("artifacts", []):
            bucket, _, key = artifact["url"].removeprefix("s3://").partition("/")
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            if hashlib.sha256(body).hexdigest() != artifact["sha256"]:
                problems.append(f"{name}: {artifact['url']} does not match its sha256")
        run = f"{self.namespace}_{name}_{status.get('attempts')}"
        if (admitted := self.report.runs_started.get(run, 0)) != 1:
            problems.append(f"{name}: its final attempt {run} was admitted {admitted} times")
        return problems


def save(report: ChaosReport, path: Path) -> None:
    path.write_text(json.dumps(report.summary(), indent=2) + "\n")
