"""The whole local cluster: control plane plus simulated GPU nodes and their kubelet stand-in.

with LocalCluster(Path("/tmp/fleet")) as cluster:
    cluster.kubectl("get", "nodes")
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from . import binaries, simnodes
from .controlplane import ControlPlane
from .processes import ManagedProcess, ProcessExited
from .waiting import wait_for


class ClusterAccess:
    """kubectl and API clients for a cluster reached through an admin kubeconfig."""

    kubeconfig: Path

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(str(self.kubeconfig))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binaries.ensure("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result


@dataclass
class ExistingCluster(ClusterAccess):
    """A cluster someone else runs (kind, a dev cluster): tests use it as it is."""

    kubeconfig: Path

    @property
    def server(self) -> str:
        return str(self.api_client().configuration.host)


@dataclass
class LocalCluster(ClusterAccess):
    workdir: Path
    nodes: tuple[simnodes.SimNode, ...] | list[simnodes.SimNode] = simnodes.DEFAULT_FLEET
    control_plane: ControlPlane = field(init=False)
    kubeconfig: Path = field(init=False)
    kubelet: ManagedProcess | None = field(init=False, default=None)
    startup_seconds: float | None = None
    profiling: bool = False  # see ControlPlane

    def __post_init__(self) -> None:
        self.control_plane = ControlPlane(self.workdir, profiling=self.profiling)
        self.kubeconfig = self.control_plane.kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    def start(self) -> LocalCluster:
        if self.kubelet is not None:
            # `with LocalCluster(...).start()` would start a second control plane and leak the first.
            raise RuntimeError(f"the local cluster in {self.workdir} is already running")
        started = time.monotonic()
        binaries.ensure("kubectl")
        self.control_plane.start()
        try:
            fleet = simnodes.save_fleet(self.nodes, self.workdir / "fleet.json")
            self.kubelet = ManagedProcess(
                "local-kubelet",
                [
                    sys.executable,
                    "-m",
                    "gpufleet.localcluster.kubelet",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--fleet={fleet}",
                    f"--state-dir={self.workdir / 'pods'}",
                ],
                self.workdir / "logs" / "local-kubelet.log",
            )
            self.wait_nodes_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def wait_nodes_ready(self, timeout: float = 60) -> None:
        core = client.CoreV1Api(self.api_client())
        names = {n.name for n in self.nodes}
        kubelet = self.kubelet

        def all_ready() -> bool:
            if kubelet is not None and not kubelet.alive():
                raise ProcessExited(f"local kubelet exited:\n{kubelet.log_tail()}")
            ready = {
                n.metadata.name
                for n in core.list_node().items
                if n.metadata
                and n.status
                and any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            }
            return names <= ready

        wait_for(all_ready, bool, timeout, what=f"nodes {sorted(names)} to be Ready")

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop(grace_seconds=15)
            self.kubelet = None
        self.control_plane.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
