"""gpufleet itself on the local cluster: CRDs, the operator's identity, the operator process.

The operator runs as a local process with its own ServiceAccount's token and exactly the
RBAC of ``gpufleet.rbac``, the way the Helm chart runs it in a real cluster.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import sys
from pathlib import Path

import yaml
from kubernetes import client

from gpufleet import rbac
from gpufleet.api import crdgen

from .controlplane import write_kubeconfig
from .processes import ManagedProcess, free_port
from .waiting import wait_for

OPERATOR_NAMESPACE = "gpufleet-system"
OPERATOR_SA = "gpufleet-operator"
FIELD_MANAGER = "gpufleet-local"


def apply_crds(api: client.ApiClient) -> list[str]:
    """Server-side applies crds/*.yaml and waits until each is Established."""
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(crdgen.CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        extensions.patch_custom_resource_definition(
            crd["metadata"]["name"],
            crd,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        names.append(crd["metadata"]["name"])

    def established(crd: client.V1CustomResourceDefinition) -> bool:
        conditions = crd.status.conditions if crd.status else None
        return any(c.type == "Established" and c.status == "True" for c in conditions or [])

    for name in names:
        wait_for(
            functools.partial(extensions.read_custom_resource_definition, name),
            established,
            60,
            what=f"{name} Established",
        )
    return names


def _rules(rules: list[dict]) -> list[client.V1PolicyRule]:
    return [
        client.V1PolicyRule(api_groups=r["apiGroups"], resources=r["resources"], verbs=r["verbs"])
        for r in rules
    ]


def install_operator_identity(api: client.ApiClient) -> None:
    """A ServiceAccount bound to the rules gpufleet.rbac declares (cluster-wide mode)."""
    core, authz = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    document = rbac.rules_document()
    role_ref = "rbac.authorization.k8s.io"
    subject = [client.RbacV1Subject(kind="ServiceAccount", name=OPERATOR_SA, namespace=OPERATOR_NAMESPACE)]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
    core.create_namespaced_service_account(
        OPERATOR_NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=OPERATOR_SA))
    )
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
            role_ref=client.V1RoleRef(api_group=role_ref, kind="ClusterRole", name=OPERATOR_SA),
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
            role_ref=client.V1RoleRef(api_group=role_ref, kind="Role", name=OPERATOR_SA),
        ),
    )


class OperatorProcess:
    """``gpufleet operator`` as the operator's ServiceAccount; can be killed and started again."""

    def __init__(
        self,
        api: client.ApiClient,
        server: str,
        ca_cert: Path,
        workdir: Path,
        s3_endpoint: str,
        s3_secret: str,
        *,
        identity: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """``server`` may be a proxy in front of the API server; ``identity`` names the replica
        in leader election (as POD_NAME does in a pod)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.key_file = workdir / "token-key"
        self.key_file.write_text(secrets.token_hex(32))
        self.key_file.chmod(0o600)
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=24 * 3600)
        )
        issued = client.CoreV1Api(api).create_namespaced_service_account_token(
            OPERATOR_SA, OPERATOR_NAMESPACE, request
        )
        if issued.status is None:
            raise RuntimeError(f"no token issued for {OPERATOR_NAMESPACE}/{OPERATOR_SA}")
        token = issued.status.token
        self.kubeconfig = write_kubeconfig(
            workdir / "operator.kubeconfig", server, ca_cert, OPERATOR_SA, token=token
        )
        self.s3_endpoint = s3_endpoint
        self.s3_secret = s3_secret
        self.identity = identity
        self.extra_args = extra_args
        self.process: ManagedProcess | None = None
        self.starts = 0
        self.health_port = 0
        self.metrics_port = 0  # of the current process; a new one at each start

    def start(self) -> None:
        self.starts += 1
        self.health_port = free_port()  # /healthz: "standby" while waiting for the Lease
        self.metrics_port = free_port()
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
                self.s3_endpoint,
                "--worker-s3-secret",
                self.s3_secret,
                "--bind-address",
                "127.0.0.1",
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                *self.extra_args,
            ],
            self.workdir / f"operator-{self.starts}.log",
            env={
                **os.environ,
                "KUBECONFIG": str(self.kubeconfig),
                **({"POD_NAME": self.identity} if self.identity else {}),
            },
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when the operator's node dies."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.stop(0)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines) if self.process else ""
