"""The chaos suite at CI size: every fault of bench/chaos lands once while jobs run.

Run it at full size with ``python -m bench.chaos``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos.scenario import FAULTS, Chaos, ChaosPlan
from gpufleet.localcluster.cluster import LocalCluster
from gpufleet.localcluster.fleet import OperatorProcess
from tests.conftest import BUCKET, S3_SECRET

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3]


def test_no_job_lost_or_run_twice_and_one_replica_writes_under_every_fault(
    cluster: Any, fleet_namespace: str, operator: OperatorProcess, s3_server: Any, tmp_path: Path
) -> None:
    if not isinstance(cluster, LocalCluster):
        pytest.skip("reads the workers' logs from the local kubelet's state directory")
    operator.stop()  # the session's replica would contend for the Lease; later tests restart it

    def make_operator(server: str, name: str, lease_args: tuple[str, ...]) -> OperatorProcess:
        return OperatorProcess(
            cluster.api_client(),
            server,
            cluster.control_plane.ca_cert,
            tmp_path / name,
            s3_server.endpoint,
            S3_SECRET,
            extra_args=lease_args,
        )

    plan = ChaosPlan(jobs=16)
    report = Chaos(cluster, fleet_namespace, BUCKET, s3_server.client(), make_operator, tmp_path, plan).run()
    print(report.summary())
    assert report.problems() == []
    # Every fault landed while jobs were in progress, and the 409s were injected.
    for fault in FAULTS:
        assert report.faults[fault] == 1, (fault, report.faults)
    assert report.injected_conflicts > 0
    assert report.frozen_exit_codes and all(code is not None for code in report.frozen_exit_codes)
