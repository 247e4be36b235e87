"""Fleet: helpers to create pools and jobs in a test namespace served by the session's operator."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from kubernetes import client

from gpufleet.api.models import GROUP, VERSION
from gpufleet.core.workerpod import token_secret_name
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker import protocol
from tests.conftest import BUCKET


class Fleet:
    """Helpers for one test namespace: create pools and jobs, read them, talk to workers."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace

    def pool(
        self, name: str, replicas: int = 1, min_memory: str = "16Gi", max_jobs_per_gpu: int = 2, **spec: Any
    ) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {
                "runtime": "builtin",
                "image": "ghcr.io/gpufleet/worker:0.1.0",
                "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "1Gi"}],
                "tasks": ["text-to-image"],
                "gpu": {"count": 1, "minMemory": min_memory, "maxJobsPerGPU": max_jobs_per_gpu},
                "replicas": replicas,
                **spec,
            },
        }
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "workerpools", body
        )

    def job(
        self,
        name: str,
        pool: str = "sd",
        priority: int = 0,
        steps: int = 4,
        size: int = 64,
        seed: int | None = None,
        images: int = 1,
        **spec: Any,
    ) -> dict:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GenerationJob",
            "metadata": {"name": name},
            "spec": {
                "poolRef": {"name": pool},
                "task": "text-to-image",
                "model": "tiny-sd",
                "input": {
                    "prompt": f"test {name}",
                    "width": size,
                    "height": size,
                    "steps": steps,
                    "seed": seed if seed is not None else abs(hash(name)) % 2**31,
                    "numImages": images,
                },
                "vram": "1Gi",
                "priority": priority,
                "output": {"uri": f"s3://{BUCKET}/{self.namespace}/"},
                **spec,
            },
        }
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "generationjobs", body
        )

    def get_job(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "generationjobs", name
        )

    def get_pool(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "workerpools", name)

    def wait_pool_status(self, name: str, predicate, timeout: float = 60, what: str = "") -> dict:
        return wait_for(
            lambda: self.get_pool(name).get("status", {}),
            predicate,
            timeout,
            what=what or f"pool {name}'s status",
        )

    def patch_job(self, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "generationjobs", name, {"spec": spec}
        )

    def jobs(self) -> list[dict]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "generationjobs")[
            "items"
        ]

    def wait_job(self, name: str, predicate, timeout: float = 120, what: str = "") -> dict:
        return wait_for(
            lambda: self.get_job(name),
            predicate,
            timeout,
            what=what or f"job {name}",
            describe=lambda j: (
                str(j.get("status", {}).get("phase")) + " " + str(j.get("status", {}).get("message"))
            ),
        )

    def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict:
        return self.wait_job(
            name,
            lambda j: j.get("status", {}).get("phase") in phases,
            timeout,
            what=f"job {name} in {phases}",
        )

    def worker_pods(self, pool: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(self.namespace, label_selector=f"gpufleet.io/pool={pool}").items

    def wait_ready_workers(self, pool: str, count: int, timeout: float = 120) -> list[client.V1Pod]:
        def ready(pods: list[client.V1Pod]) -> bool:
            return (
                sum(
                    1
                    for p in pods
                    if p.metadata.deletion_timestamp is None
                    and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                )
                >= count
            )

        return wait_for(
            lambda: self.worker_pods(pool),
            ready,
            timeout,
            what=f"{count} ready workers of {pool}",
            describe=lambda pods: str([(p.metadata.name, p.status.phase) for p in pods]),
        )

    def token(self, pool: str) -> str:
        secret = self.core.read_namespaced_secret(token_secret_name(pool), self.namespace)
        return base64.b64decode(secret.data["token"]).decode()

    def worker_runs(self, pool: str) -> dict[str, list[protocol.JobStatus]]:
        """Every run each live worker of ``pool`` knows, finished ones included."""
        token = self.token(pool)
        runs = {}
        for pod in self.worker_pods(pool):
            if not pod.status.pod_ip:
                continue
            response = httpx.get(
                f"http://{pod.status.pod_ip}:8080{protocol.JOBS}",
                headers={protocol.AUTH_HEADER: protocol.auth_header_value(token)},
                timeout=5,
            )
            runs[pod.metadata.name] = protocol.JobList.model_validate_json(response.content).jobs
        return runs

    def inventories(self, pool: str) -> list[protocol.Inventory]:
        token = self.token(pool)
        found = []
        for pod in self.worker_pods(pool):
            if not pod.status.pod_ip:
                continue
            try:
                response = httpx.get(
                    f"http://{pod.status.pod_ip}:8080{protocol.INVENTORY}",
                    headers={protocol.AUTH_HEADER: protocol.auth_header_value(token)},
                    timeout=5,
                )
                found.append(protocol.Inventory.model_validate_json(response.content))
            except (httpx.HTTPError, ValueError):
                continue
        return found


@pytest.fixture
def fleet(cluster: Any, fleet_namespace: str) -> Fleet:
    return Fleet(cluster, fleet_namespace)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
