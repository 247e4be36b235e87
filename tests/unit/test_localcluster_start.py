"""A local cluster starts once: a second start would leave the first control plane running."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.localcluster.cluster import LocalCluster
from gpufleet.localcluster.processes import ManagedProcess


def test_starting_a_running_cluster_again_is_refused(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    cluster.kubelet = ManagedProcess("local-kubelet", ["true"], tmp_path / "kubelet.log")
    with pytest.raises(RuntimeError, match="already running"):
        cluster.start()
    assert not (tmp_path / "etcd").exists()  # nothing of a second control plane was started
