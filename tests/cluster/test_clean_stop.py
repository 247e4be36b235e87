"""Stopping a local cluster leaves no process and no listening port behind."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest
from kubernetes import client

from gpufleet.localcluster import simnodes
from gpufleet.localcluster.cluster import LocalCluster
from gpufleet.localcluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stop_leaves_no_process_or_port(tmp_path: Path):
    cluster = LocalCluster(tmp_path, (simnodes.SimNode("cpu-0"),)).start()
    try:
        core = client.CoreV1Api(cluster.api_client())
        wait_for(
            lambda: core.read_namespaced_service_account("default", "default"),
            bool,
            30,
            what="default ServiceAccount",
        )
        core.create_namespaced_pod(
            "default",
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="sleeper"),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(name="main", image="busybox:1.36", command=["sleep", "3600"])
                    ]
                ),
            ),
        )
        wait_for(
            lambda: core.read_namespaced_pod("sleeper", "default"),
            lambda p: p.status.phase == "Running",
            30,
            what="sleeper Running",
            describe=lambda p: str(p.status.phase),
        )
        processes = [p.popen.pid for p in cluster.control_plane.processes.values()]
        assert cluster.kubelet is not None
        processes.append(cluster.kubelet.pid)
        tree = [psutil.Process(pid) for pid in processes]
        descendants = [child for parent in tree for child in parent.children(recursive=True)]
        assert descendants, "the kubelet stand-in should have started the pod's process"
        ports = {c.laddr.port for p in tree for c in p.net_connections(kind="tcp") if c.status == "LISTEN"}
        assert ports, "the control plane should be listening"
    finally:
        cluster.stop()
    still_running = [p for p in tree + descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert still_running == []
    assert [port for port in ports if listening(port)] == []
