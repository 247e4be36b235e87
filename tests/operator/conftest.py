"""The operator as a process under its own ServiceAccount, with exactly the RBAC of gpufleet.rbac."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from gpufleet import rbac
from gpufleet.api.models import GROUP, VERSION
from gpufleet.core.workerpod import token_secret_name
from gpufleet.localcluster.controlplane import write_kubeconfig
from gpufleet.localcluster.processes import ManagedProcess, free_port
from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker import protocol

OPERATOR_NAMESPACE = "gpufleet-system"
OPERATOR_SA = "gpufleet-operator"
BUCKET = "gpufleet-artifacts"
S3_SECRET = "gpufleet-s3"


def _rules(rules: list[dict]) -> list[client.V1PolicyRule]:
    return [
        client.V1PolicyRule(api_groups=r["apiGroups"], resources=r["resources"], verbs=r["verbs"])
        for r in rules
    ]


def install_rbac(api: client.ApiClient) -> None:
    """The operator's identity: a ServiceAccount bound to the rules gpufleet.rbac declares."""
    core, authz = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    document = rbac.rules_document()
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
    core.create_namespaced_service_account(
        OPERATOR_NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=OPERATOR_SA))
    )
    subject = [client.RbacV1Subject(kind="ServiceAccount", name=OPERATOR_SA, namespace=OPERATOR_NAMESPACE)]
    authz.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=OPERATOR_SA),
            rules=_rules(document["namespaced"] + document["cluster"]),
        )
    )
    authz.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=OPERATOR_SA),
            subjects=subject,
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=OPERATOR_SA
            ),
        )
    )
    authz.create_namespaced_role(
        OPERATOR_NAMESPACE,
        client.V1Role(metadata=client.V1ObjectMeta(name=OPERATOR_SA), rules=_rules(document["ownNamespace"])),
    )
    authz.create_namespaced_role_binding(
        OPERATOR_NAMESPACE,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=OPERATOR_SA),
            subjects=subject,
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=OPERATOR_SA),
        ),
    )


class OperatorProcess:
    """``gpufleet operator`` run as the operator's ServiceAccount; can be killed and restarted."""

    def __init__(self, cluster: Any, workdir: Path, s3: S3Server) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.s3 = s3
        self.key_file = workdir / "token-key"
        self.key_file.write_text(secrets.token_hex(32))
        core = client.CoreV1Api(cluster.api_client())
        token = core.create_namespaced_service_account_token(
            OPERATOR_SA,
            OPERATOR_NAMESPACE,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=7200)
            ),
        ).status.token
        self.kubeconfig = write_kubeconfig(
            workdir / "operator.kubeconfig",
            cluster.server,
            cluster.control_plane.ca_cert,
            OPERATOR_SA,
            token=token,
        )
        self.process: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.health_port = free_port()
        self.process = ManagedProcess(
            "operator",
            [
                sys.executable,
                "-m",
                "gpufleet.cli",
                "operator",
                "--token-key-file",
                str(self.key_file),
                "--leader-election-namespace",
                OPERATOR_NAMESPACE,
                "--worker-s3-endpoint",
                self.s3.endpoint,
                "--worker-s3-secret",
                S3_SECRET,
                "--bind-address",
                "127.0.0.1",
                "--metrics-port",
                str(free_port()),
                "--health-port",
                str(self.health_port),
            ],
            self.workdir / f"operator-{self.starts}.log",
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as when a node dies."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.stop(0)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)

    def log_tail(self) -> str:
        return self.process.log_tail(60) if self.process else ""


@pytest.fixture(scope="session")
def operator(
    cluster: Any, gpufleet_crds: list[str], s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_rbac(cluster.api_client())
    s3_server.create_bucket(BUCKET)
    process = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), s3_server)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def fleet_namespace(
    namespace: str, core: client.CoreV1Api, s3_server: S3Server, operator: OperatorProcess
) -> str:
    """A namespace with the S3 credentials Secret workers need, and a running operator."""
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=S3_SECRET),
            string_data={
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            },
        ),
    )
    if operator.process is None or not operator.process.alive():
        operator.start()
    return namespace


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
