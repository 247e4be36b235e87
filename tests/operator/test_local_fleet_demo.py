"""README's first command: `gpufleet up` brings up the fleet and runs the sample job end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3, pytest.mark.slow]


def test_gpufleet_up_runs_the_sample_job_and_prints_its_artifact(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpufleet.cli",
            "up",
            "--exit-after-start",
            "--state-dir",
            str(tmp_path / "up"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "job lighthouse: Running" in output
    assert "job lighthouse: Succeeded" in output
    assert "artifact s3://gpufleet-artifacts/studio/lighthouse/image-0.png" in output
    assert f"export KUBECONFIG={tmp_path / 'up' / 'admin.kubeconfig'}" in output
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:" in output and "AWS_ACCESS_KEY_ID=gpufleet-" in output
    assert "gpufleet dashboard -A" in output
