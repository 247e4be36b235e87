"""Two local clusters on one machine never give their pods the same address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from kubernetes import client

from gpufleet.localcluster import simnodes
from gpufleet.localcluster.cluster import LocalCluster
from gpufleet.localcluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet]

PODS = 6


def pod_ips(cluster: LocalCluster, namespace: str) -> set[str]:
    """Starts PODS process-less pods in ``namespace`` and returns their addresses."""
    core = client.CoreV1Api(cluster.api_client())
    for index in range(PODS):
        core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=f"p{index}"),
                spec=client.V1PodSpec(
                    tolerations=[client.V1Toleration(operator="Exists")],
                    node_selector={simnodes.SIMULATED_ONLY_LABEL: "true"},
                    containers=[client.V1Container(name="main", image="does-not-exist.invalid/x:1")],
                ),
            ),
        )
    pods = wait_for(
        lambda: core.list_namespaced_pod(namespace).items,
        lambda items: len(items) == PODS and all(p.status.pod_ip for p in items),
        60,
        what=f"{PODS} pods with addresses in {namespace}",
        describe=lambda items: str([p.status.pod_ip for p in items]),
    )
    return {p.status.pod_ip for p in pods}


def test_two_clusters_hand_out_disjoint_pod_addresses(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    other = LocalCluster(tmp_path, (simnodes.SimNode("sim-0", simulated_only=True),)).start()
    try:
        other_core = client.CoreV1Api(other.api_client())
        wait_for(
            lambda: other_core.read_namespaced_service_account("default", "default"),
            bool,
            30,
            what="default ServiceAccount in the second cluster",
        )
        ours, theirs = pod_ips(cluster, namespace), pod_ips(other, "default")
    finally:
        other.stop()
    assert len(ours) == len(theirs) == PODS
    assert not ours & theirs
    # Each cluster's pods share one loopback /16 that the other's do not touch.
    networks = [{ipaddress.ip_network(f"{ip}/16", strict=False) for ip in ips} for ips in (ours, theirs)]
    assert all(len(n) == 1 for n in networks) and networks[0] != networks[1]
    assert all(ipaddress.ip_address(ip).is_loopback for ip in ours | theirs)
