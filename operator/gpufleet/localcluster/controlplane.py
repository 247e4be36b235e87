"""etcd, kube-apiserver, kube-scheduler and kube-controller-manager as local processes.

Everything listens on 127.0.0.1 on free ports, with a fresh CA, client certificates per
component, RBAC authorization, and ServiceAccount token signing, so that what runs
against it sees a real API server: schema validation, CEL, admission, watch, RBAC,
the real scheduler and the real garbage collector.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import binaries
from .pki import CertificateAuthority, KeyPair, service_account_keys
from .processes import ManagedProcess, ProcessExited, free_port
from .waiting import WaitTimeout, wait_for

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT = 120.0


def write_kubeconfig(
    path: Path, server: str, ca: Path, user: str, *, client: KeyPair | None = None, token: str | None = None
) -> Path:
    """A self-contained kubeconfig (certificates inlined) for one identity."""
    credentials: dict[str, str] = {}
    if client is not None:
        credentials["client-certificate-data"] = base64.b64encode(client.cert.read_bytes()).decode()
        credentials["client-key-data"] = base64.b64encode(client.key.read_bytes()).decode()
    if token is not None:
        credentials["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gpufleet-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "gpufleet-local", "context": {"cluster": "gpufleet-local", "user": user}}],
        "current-context": "gpufleet-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """One local control plane rooted at ``workdir`` (certificates, etcd data, logs)."""

    workdir: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    startup_seconds: float | None = None
    profiling: bool = False  # the API server serves /debug/pprof (to its admin)

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.workdir / "admin.kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.crt"

    def start(self) -> ControlPlane:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Every start is a fresh cluster: old data would belong to certificates that are gone.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        paths = {
            name: binaries.ensure(name)
            for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        }
        ca = CertificateAuthority(self.pki_dir)
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
        )
        admin = ca.issue("admin", "gpufleet-admin", organizations=("system:masters",))
        scheduler = ca.issue("scheduler", "system:kube-scheduler")
        controller_manager = ca.issue("controller-manager", "system:kube-controller-manager")
        sa_keys = service_account_keys(self.pki_dir)

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{api_port}"
        logs = self.workdir / "logs"
        try:
            self._start_etcd(paths["etcd"], etcd_port, peer_port, logs)
            self.processes["kube-apiserver"] = ManagedProcess(
                "kube-apiserver",
                [
                    str(paths["kube-apiserver"]),
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--tls-cert-file={serving.cert}",
                    f"--tls-private-key-file={serving.key}",
                    f"--client-ca-file={ca.cert_path}",
                    f"--service-account-key-file={sa_keys.cert}",
                    f"--service-account-signing-key-file={sa_keys.key}",
                    f"--service-account-issuer={SA_ISSUER}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=RBAC",
                    # Loopback addresses are not valid Endpoints; pods reach the API server
                    # through the kubeconfig the kubelet stand-in writes for them.
                    "--endpoint-reconciler-type=none",
                    f"--profiling={str(self.profiling).lower()}",
                    f"--cert-dir={self.pki_dir}",
                ],
                logs / "kube-apiserver.log",
            )
            write_kubeconfig(self.kubeconfig, self.server, ca.cert_path, "admin", client=admin)
            self._wait_ready(admin)
            for name, identity in (
                ("kube-scheduler", scheduler),
                ("kube-controller-manager", controller_manager),
            ):
                config = write_kubeconfig(
                    self.workdir / f"{name}.kubeconfig", self.server, ca.cert_path, name, client=identity
                )
                argv = [
                    str(paths[name]),
                    f"--kubeconfig={config}",
                    f"--authentication-kubeconfig={config}",
                    f"--authorization-kubeconfig={config}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--leader-elect=false",
                ]
                if name == "kube-controller-manager":
                    argv += [
                        f"--service-account-private-key-file={sa_keys.key}",
                        f"--root-ca-file={ca.cert_path}",
                        "--use-service-account-credentials=true",
                    ]
                self.processes[name] = ManagedProcess(name, argv, logs / f"{name}.log")
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_etcd(self, etcd: Path, client_port: int, peer_port: int, logs: Path) -> None:
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self.processes["etcd"] = ManagedProcess(
            "etcd",
            [
                str(etcd),
                "--name=local",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=local={peer_url}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # A throwaway cluster: durability is not worth the fsync latency.
                "--unsafe-no-fsync",
            ],
            logs / "etcd.log",
        )
        self._wait(
            lambda: urllib.request.urlopen(f"{client_url}/health", timeout=2).status == 200,
            "etcd health",
            "etcd",
        )

    def _ssl_context(self, client: KeyPair) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def _wait_ready(self, admin: KeyPair) -> None:
        context = self._ssl_context(admin)

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=2, context=context) as r:
                return r.status == 200

        self._wait(ready, "kube-apiserver /readyz", "kube-apiserver")

    def _wait_healthy(self) -> None:
        """Scheduler and controller-manager are up once they have written their first leases/events."""

        def components_alive() -> bool:
            return all(self.processes[n].alive() for n in ("kube-scheduler", "kube-controller-manager"))

        # Their /healthz needs delegated auth; the cheap, honest check is that they stay up and
        # the controller-manager's ServiceAccount controller has populated kube-system.
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))

        def default_sa_exists() -> bool:
            if not components_alive():
                raise ProcessExited("a control-plane component exited")
            api.read_namespaced_service_account("default", "default")
            return True

        self._wait(
            default_sa_exists,
            "the controller-manager to create default/default ServiceAccount",
            "kube-controller-manager",
        )

    def _wait(self, predicate, what: str, component: str) -> None:
        process = self.processes[component]

        def check() -> bool:
            if not process.alive():
                raise ProcessExited(
                    f"{component} exited with {process.popen.returncode}:\n{process.log_tail()}"
                )
            return bool(predicate())

        try:
            wait_for(check, bool, START_TIMEOUT, what=what)
        except WaitTimeout as error:
            raise TimeoutError(f"{error}\n--- {component} log tail ---\n{process.log_tail()}") from None

    def stop(self) -> None:
        # Reverse start order: clients of the API server first, etcd last.
        for name in reversed(list(self.processes)):
            self.processes.pop(name).stop()
