"""Simulated GPU nodes: Node objects that look like real GPU nodes, kept Ready by leases.

Each node carries the GPU Feature Discovery labels and the ``nvidia.com/gpu`` capacity a
real node with NVIDIA's device plugin has, so the real scheduler places pods on them by
the same rules it would in production.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from gpufleet import labels

KUBELET_VERSION = "v1.36.3"
NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
# Labels nodes whose pods go Running with no process: for scale tests of thousands of pods.
SIMULATED_ONLY_LABEL = "localcluster.gpufleet.io/simulated-only"


@dataclass(frozen=True)
class SimNode:
    name: str
    gpu_product: str | None = None
    gpu_memory_mib: int = 0
    gpu_count: int = 0
    cpu: str = "16"
    memory: str = "64Gi"
    max_pods: int = 110
    simulated_only: bool = False
    taints: tuple[dict[str, str], ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)

    def node_object(self, now: dt.datetime) -> client.V1Node:
        node_labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.extra_labels,
        }
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.max_pods),
            "ephemeral-storage": "200Gi",
        }
        if self.gpu_count:
            node_labels.update(
                {
                    labels.GPU_PRESENT: "true",
                    labels.GPU_PRODUCT: self.gpu_product or "NVIDIA-GPU",
                    labels.GPU_MEMORY_MIB: str(self.gpu_memory_mib),
                    labels.GPU_COUNT: str(self.gpu_count),
                }
            )
            capacity[labels.GPU_RESOURCE] = str(self.gpu_count)
        if self.simulated_only:
            node_labels[SIMULATED_ONLY_LABEL] = "true"
        ready = client.V1NodeCondition(
            type="Ready",
            status="True",
            reason="KubeletReady",
            message="gpufleet local kubelet",
            last_heartbeat_time=now,
            last_transition_time=now,
        )
        return client.V1Node(
            metadata=client.V1ObjectMeta(name=self.name, labels=node_labels),
            spec=client.V1NodeSpec(
                taints=[
                    client.V1Taint(key=t["key"], value=t.get("value"), effect=t["effect"])
                    for t in self.taints
                ]
                or None
            ),
            status=client.V1NodeStatus(
                capacity=capacity,
                allocatable=capacity,
                conditions=[ready],
                addresses=[
                    client.V1NodeAddress(type="InternalIP", address="127.0.0.1"),
                    client.V1NodeAddress(type="Hostname", address=self.name),
                ],
                node_info=client.V1NodeSystemInfo(
                    architecture="amd64",
                    boot_id="",
                    container_runtime_version="gpufleet-local://1",
                    kernel_version="",
                    kube_proxy_version="",
                    kubelet_version=KUBELET_VERSION,
                    machine_id=self.name,
                    operating_system="linux",
                    os_image="gpufleet local",
                    system_uuid=self.name,
                ),
            ),
        )


GPU_TAINT = {"key": labels.GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}

# A small mixed fleet: a CPU node for the operator and storage, and three GPU classes.
DEFAULT_FLEET: tuple[SimNode, ...] = (
    SimNode("cpu-0", cpu="8", memory="32Gi"),
    SimNode("gpu-v100-0", "Tesla-V100-SXM2-16GB", 16384, 2, taints=(GPU_TAINT,)),
    SimNode("gpu-l4-0", "NVIDIA-L4", 23034, 2, taints=(GPU_TAINT,)),
    SimNode("gpu-a100-0", "NVIDIA-A100-SXM4-80GB", 81920, 4, taints=(GPU_TAINT,)),
)


SIMULATED_ONLY_TAINT = {"key": SIMULATED_ONLY_LABEL, "value": "true", "effect": "NoSchedule"}


def simulated_only_nodes(count: int, prefix: str = "sim-a100", max_pods: int = 250) -> tuple[SimNode, ...]:
    """Process-less 8-GPU nodes for scale tests; tainted so only pods that ask land there."""
    return tuple(
        SimNode(
            f"{prefix}-{i}",
            "NVIDIA-A100-SXM4-80GB",
            81920,
            8,
            cpu="96",
            memory="1Ti",
            max_pods=max_pods,
            simulated_only=True,
            taints=(SIMULATED_ONLY_TAINT,),
        )
        for i in range(count)
    )


def save_fleet(nodes: tuple[SimNode, ...] | list[SimNode], path: Path) -> Path:
    path.write_text(json.dumps([asdict(n) for n in nodes], indent=2))
    return path


def load_fleet(path: Path) -> list[SimNode]:
    return [
        SimNode(**{**raw, "taints": tuple(raw.get("taints", ()))}) for raw in json.loads(path.read_text())
    ]


def register(core: client.CoreV1Api, node: SimNode) -> None:
    """Creates the Node (or refreshes its status if it already exists)."""
    body = node.node_object(dt.datetime.now(dt.UTC))
    try:
        core.create_node(body)
    except ApiException as error:
        if error.status != 409:
            raise
        core.patch_node_status(
            node.name, {"status": client.ApiClient().sanitize_for_serialization(body.status)}
        )


def renew_lease(coordination: client.CoordinationV1Api, node_name: str) -> None:
    """What a kubelet does every few seconds: keeps the node's Lease fresh so it stays Ready."""
    now = dt.datetime.now(dt.UTC)
    try:
        coordination.patch_namespaced_lease(
            node_name,
            NODE_LEASE_NAMESPACE,
            {"spec": {"renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}},
        )
    except ApiException as error:
        if error.status != 404:
            raise
        coordination.create_namespaced_lease(
            NODE_LEASE_NAMESPACE,
            client.V1Lease(
                metadata=client.V1ObjectMeta(name=node_name),
                spec=client.V1LeaseSpec(
                    holder_identity=node_name, lease_duration_seconds=LEASE_SECONDS, renew_time=now
                ),
            ),
        )
