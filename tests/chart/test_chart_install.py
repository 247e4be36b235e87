"""`helm install` of the chart into the real control plane.

The chart's operator pod is run by the local kubelet stand-in as a process that holds a
token of the chart's ServiceAccount; `kubectl auth can-i --as` checks what that identity
may and may not do; `helm uninstall` leaves nothing of the release but the CRDs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from gpufleet.localcluster.waiting import wait_for

from .conftest import CHART, helm_set_args

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CRD_NAMES = ("workerpools.gpufleet.io", "generationjobs.gpufleet.io")
# Kinds a release of the chart creates; after uninstall none may carry its instance label.
RELEASE_KINDS = (
    "deployments,pods,serviceaccounts,secrets,services,networkpolicies,poddisruptionbudgets,"
    "roles,rolebindings,clusterroles,clusterrolebindings,leases"
)


@dataclass
class Release:
    name: str
    namespace: str
    cluster: Any
    env: dict[str, str]
    helm: Path

    @property
    def service_account(self) -> str:
        return f"{self.name}-gpufleet"

    @property
    def identity(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def run_helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.helm), f"--kubeconfig={self.cluster.kubeconfig}", "--namespace", self.namespace, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def can_i(self, verb: str, resource: str, namespace: str | None) -> bool:
        scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        # kubectl reads "pods/exec" as the pod named exec; a subresource goes in its own flag.
        resource, _, subresource = resource.partition("/")
        if subresource:
            scope.append(f"--subresource={subresource}")
        result = self.cluster.kubectl(
            "auth", "can-i", verb, resource, f"--as={self.identity}", *scope, check=False
        )
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), f"can-i {verb} {resource}: {result.stdout}{result.stderr}"
        return answer == "yes"


def adopt_crds(cluster: Any, release: str, namespace: str) -> None:
    """Lets this release take over CRDs another installation applied (as `helm install` requires)."""
    existing = cluster.kubectl("get", "crd", *CRD_NAMES, "-o", "name", "--ignore-not-found").stdout.split()
    for crd in existing:
        cluster.kubectl(
            "annotate", crd, "--overwrite",
            f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}",
        )  # fmt: skip
        cluster.kubectl("label", crd, "--overwrite", "app.kubernetes.io/managed-by=Helm")


@pytest.fixture
def extra_namespaces(cluster: Any) -> Iterator[tuple[str, str]]:
    """A namespace the operator will watch and one it must stay out of."""
    suffix = uuid.uuid4().hex[:5]
    names = (f"chart-watched-{suffix}", f"chart-other-{suffix}")
    for name in names:
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def install(cluster: Any, namespace: str, helm: Path, tmp_path: Path) -> Iterator[Any]:
    """Installs a release into `namespace` with the given values; uninstalls it afterwards."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    installed: list[Release] = []

    def run(values: dict[str, Any]) -> Release:
        release = Release(f"gf{uuid.uuid4().hex[:5]}", namespace, cluster, env, helm)
        adopt_crds(cluster, release.name, namespace)
        release.run_helm("install", release.name, str(CHART), *helm_set_args(values))
        installed.append(release)
        return release

    yield run
    for release in installed:
        release.run_helm("uninstall", release.name, "--wait", check=False)


def operator_pod(core: client.CoreV1Api, release: Release) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(
        release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
    ).items
    assert len(pods) <= 1, f"{len(pods)} operator pods"
    return pods[0] if pods else None


def pod_ready(pod: client.V1Pod | None) -> bool:
    conditions = (pod.status.conditions if pod and pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def process_of_pod(pod_name: str) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of the local process the stand-in runs for ``pod_name``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = dict(
                entry.split("=", 1) for entry in (proc / "environ").read_text().split("\0") if "=" in entry
            )
            if environ.get("POD_NAME") != pod_name:
                continue
            return (proc / "cmdline").read_text().rstrip("\0").split("\0"), environ
        except (OSError, ValueError):
            continue
    raise AssertionError(f"no local process runs pod {pod_name}")


def token_user(api: client.ApiClient, kubeconfig: Path) -> str:
    """Who the API server says the token in ``kubeconfig`` belongs to (a TokenReview)."""
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    review = client.AuthenticationV1Api(api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    status = review.status
    assert status is not None and status.authenticated and status.user, status
    return str(status.user.username)


def test_operator_pod_runs_as_the_charts_service_account(cluster, core, install, extra_namespaces):
    watched, _ = extra_namespaces
    release = install({"watchNamespaces": [watched]})
    pod = wait_for(
        lambda: operator_pod(core, release),
        pod_ready,
        120,
        what="the operator pod to be run by the local kubelet and pass its health probes",
    )
    assert pod.spec.service_account_name == release.service_account
    assert pod.spec.node_name == "cpu-0", "the operator belongs on a node without GPU taints"
    argv, environ = process_of_pod(pod.metadata.name)
    # The console script runs through its interpreter: [python] .../bin/gpufleet operator ...
    program = next(i for i, arg in enumerate(argv) if arg.endswith("/gpufleet"))
    assert argv[program + 1] == "operator"
    assert f"--namespace={watched}" in argv
    # The key Secret the chart made is mounted and its container path translated to the host.
    key_arg = next(a for a in argv if a.startswith("--token-key-file="))
    key_file = Path(key_arg.split("=", 1)[1])
    secret = core.read_namespaced_secret(f"{release.name}-gpufleet-token-key", release.namespace)
    assert key_file.read_bytes() == base64.b64decode(secret.data["key"])
    assert f"--bind-address={pod.status.pod_ip}" in argv
    # The process talks to the API server with the chart's ServiceAccount token, nothing more.
    assert token_user(cluster.api_client(), Path(environ["KUBECONFIG"])) == release.identity


def test_namespaced_permissions_matrix(install, extra_namespaces):
    watched, other = extra_namespaces
    release = install({"watchNamespaces": [watched], "replicas": 0})
    ns = release.namespace
    must = [
        ("watch", "workerpools.gpufleet.io", watched),
        ("patch", "workerpools.gpufleet.io", watched),  # kopf's finalizer on pools
        ("delete", "generationjobs.gpufleet.io", watched),
        ("patch", "workerpools.gpufleet.io/status", watched),
        ("update", "generationjobs.gpufleet.io/status", watched),
        ("create", "pods", watched),
        ("delete", "pods", watched),
        ("create", "secrets", watched),
        ("create", "events", watched),
        ("list", "nodes", None),
        ("create", "leases.coordination.k8s.io", ns),
        ("update", "leases.coordination.k8s.io", ns),
    ]
    must_not = [
        ("get", "secrets", watched),  # worker tokens are derived, never read back
        ("list", "secrets", watched),
        ("get", "secrets", ns),  # not even its own key: that is mounted, not fetched
        ("create", "pods/exec", watched),
        ("create", "pods/portforward", watched),
        ("escalate", "roles.rbac.authorization.k8s.io", watched),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None),
        ("impersonate", "users", None),
        ("impersonate", "serviceaccounts", watched),
        ("create", "serviceaccounts/token", watched),
        ("create", "pods", other),  # outside its namespaces
        ("list", "workerpools.gpufleet.io", other),
        ("create", "pods", ns),
        ("list", "pods", None),
        ("delete", "workerpools.gpufleet.io", watched),
        ("patch", "generationjobs.gpufleet.io", watched),  # jobs: status only, no finalizer
        ("create", "leases.coordination.k8s.io", watched),
        ("patch", "nodes", None),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ]
    granted = {check: release.can_i(*check) for check in must + must_not}
    assert [c for c in must if not granted[c]] == [], "missing permissions"
    assert [c for c in must_not if granted[c]] == [], "permissions beyond the operator's needs"


def test_cluster_wide_permissions_matrix(install, extra_namespaces):
    _, other = extra_namespaces
    # No operator process: a cluster-wide one would act on every other test's pools.
    release = install({"replicas": 0})
    assert release.can_i("create", "pods", other)
    assert release.can_i("list", "pods", None)
    assert release.can_i("watch", "generationjobs.gpufleet.io", None)
    assert not release.can_i("get", "secrets", other)
    assert not release.can_i("create", "pods/exec", other)
    assert not release.can_i("create", "leases.coordination.k8s.io", other)
    assert not release.can_i("delete", "nodes", None)


def test_uninstall_removes_everything_but_the_crds(cluster, core, install, extra_namespaces):
    watched, _ = extra_namespaces
    release = install({"watchNamespaces": [watched]})
    selector = f"app.kubernetes.io/instance={release.name}"

    def leftovers() -> list[str]:
        listing = cluster.kubectl("get", RELEASE_KINDS, "--all-namespaces", "-l", selector, "-o", "name")
        return listing.stdout.split()

    created = leftovers()
    for kind in ("deployment", "serviceaccount", "secret", "service", "networkpolicy", "clusterrole", "role"):
        assert any(name.split("/")[0].startswith(kind) for name in created), f"no {kind} in {created}"
    release.run_helm("uninstall", release.name, "--wait", "--timeout", "120s")
    wait_for(leftovers, lambda names: names == [], 60, what=f"every object of release {release.name} to go")
    crds = json.loads(cluster.kubectl("get", "crd", *CRD_NAMES, "-o", "json").stdout)["items"]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(CRD_NAMES)


@pytest.mark.s3
def test_sample_pool_and_job_succeed_under_the_chart(cluster, core, install, extra_namespaces, s3_server):
    watched, _ = extra_namespaces
    bucket = s3_server.create_bucket(f"chart-{uuid.uuid4().hex[:8]}")
    cluster.kubectl(
        "create", "secret", "generic", "s3-credentials", "-n", watched,
        f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}",
    )  # fmt: skip
    release = install(
        {
            "watchNamespaces": [watched],
            "artifacts": {"s3": {"endpoint": s3_server.endpoint, "credentialsSecret": "s3-credentials"}},
        }
    )
    wait_for(lambda: operator_pod(core, release), pod_ready, 120, what="the operator pod to be ready")
    pool = yaml.safe_load((EXAMPLES / "workerpool.yaml").read_text())
    job = yaml.safe_load((EXAMPLES / "text-to-image.yaml").read_text())
    job["spec"]["output"]["uri"] = f"s3://{bucket}/{watched}/"
    cluster.kubectl("apply", "-n", watched, "-f", "-", input=yaml.safe_dump_all([pool, job]))

    def status() -> dict[str, Any]:
        got = cluster.kubectl("get", "generationjob", job["metadata"]["name"], "-n", watched, "-o", "json")
        return json.loads(got.stdout).get("status") or {}

    done = wait_for(
        status,
        lambda s: s.get("phase") in ("Succeeded", "Failed", "Cancelled"),
        300,
        what="the sample job to finish",
    )
    assert done["phase"] == "Succeeded", done
    assert len(done["artifacts"]) == job["spec"]["input"]["numImages"]
    s3 = s3_server.client()
    for artifact in done["artifacts"]:
        key = artifact["url"].removeprefix(f"s3://{bucket}/")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
    conditions = {c["type"]: c["status"] for c in done["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}


def test_a_standby_replica_waits_healthy_while_one_operator_leads(cluster, core, install, extra_namespaces):
    watched, _ = extra_namespaces
    release = install({"watchNamespaces": [watched], "replicas": 2})
    selector = f"app.kubernetes.io/instance={release.name}"

    def running_pods() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(release.namespace, label_selector=selector).items
        return [p for p in pods if p.status and p.status.pod_ip and p.status.phase == "Running"]

    pods = wait_for(running_pods, lambda pods: len(pods) == 2, 120, what="two operator pods running")
    wait_for(running_pods, lambda pods: any(pod_ready(p) for p in pods), 120, what="a leader to be ready")

    def healthy(pod: client.V1Pod) -> bool:
        assert pod.status is not None
        return httpx.get(f"http://{pod.status.pod_ip}:8081/healthz", timeout=2).status_code == 200

    for pod in pods:
        wait_for(lambda pod=pod: healthy(pod), bool, 60, what=f"/healthz of {pod.metadata.name}")


def test_the_dashboard_under_the_chart_shows_pools_as_its_read_only_service_account(
    cluster, core, install, extra_namespaces
):
    watched, _ = extra_namespaces
    release = install({"replicas": 0, "dashboard": {"enabled": True}})
    name = f"{release.name}-gpufleet-dashboard"

    def dashboard_pod() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(
            release.namespace,
            label_selector=f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=dashboard",
        ).items
        return pods[0] if pods else None

    pod = wait_for(dashboard_pod, pod_ready, 120, what="the dashboard pod to be run and pass its probes")
    kubeconfig = Path(environ_of_hostname(pod.metadata.name)["KUBECONFIG"])
    assert token_user(cluster.api_client(), kubeconfig) == f"system:serviceaccount:{release.namespace}:{name}"
    cluster.kubectl("apply", "-n", watched, "-f", str(EXAMPLES / "workerpool.yaml"))
    url = f"http://{pod.status.pod_ip}:8765/api/view"
    # As `kubectl port-forward svc/NAME 8765` makes a browser ask.
    shown = wait_for(
        lambda: httpx.get(url, headers={"Host": "localhost:8765"}, timeout=5).json(),
        lambda view: any(p["namespace"] == watched and p["name"] == "sd15" for p in view["pools"]),
        60,
        what="the pool on the dashboard",
    )
    assert shown["problems"] == [] and shown["connected"], shown["problems"]
    assert httpx.get(url, headers={"Host": "elsewhere.example:8765"}, timeout=5).status_code == 403
    # Read-only: the dashboard's identity may read pools and jobs and change nothing.
    identity = f"system:serviceaccount:{release.namespace}:{name}"
    for verb, allowed in (("list", "yes"), ("watch", "yes"), ("create", "no"), ("delete", "no")):
        for resource in ("workerpools.gpufleet.io", "generationjobs.gpufleet.io"):
            answer = cluster.kubectl(
                "auth", "can-i", verb, resource, f"--as={identity}", "--all-namespaces", check=False
            ).stdout.strip()
            assert answer == allowed, (verb, resource, answer)
    assert (
        cluster.kubectl(
            "auth", "can-i", "list", "secrets", f"--as={identity}", "-A", check=False
        ).stdout.strip()
        == "no"
    )


def environ_of_hostname(pod_name: str) -> dict[str, str]:
    """The environment of the local process that runs a pod's container (HOSTNAME is the pod's name)."""
    for proc in Path("/proc").iterdir():
        try:
            text = (proc / "environ").read_text() if proc.name.isdigit() else ""
        except OSError:
            continue
        environ = dict(entry.split("=", 1) for entry in text.split("\0") if "=" in entry)
        if environ.get("HOSTNAME") == pod_name and "KUBECONFIG" in environ:
            return environ
    raise AssertionError(f"no local process runs pod {pod_name}")
