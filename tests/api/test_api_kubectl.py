"""What a user sees with kubectl: examples apply, columns print, short names and scale work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.testing import Objects

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ARTIFACT = "s3://gpufleet-artifacts/studio/lighthouse/image-0.png"
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def example_manifests() -> list[dict[str, Any]]:
    """Every object in examples/*.yaml (what `kubectl apply -f examples` creates)."""
    return [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


@pytest.fixture
def applied(cluster: Any, objects: Objects, namespace: str) -> str:
    """The examples applied with kubectl (strict validation, its default), plus some status."""
    result = cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    assert result.stdout.count("created") == len(example_manifests()), result.stdout

    pool = objects.get("WorkerPool", "sd15")
    pool["status"] = {
        "replicas": 2,
        "desiredReplicas": 3,
        "readyReplicas": 2,
        "queueDepth": 7,
        "runningJobs": 4,
        "selector": "gpufleet.io/pool=sd15",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "WorkersStarting",
                "message": "2 of 3 workers ready",
                "lastTransitionTime": "2026-11-22T10:00:00Z",
            }
        ],
    }
    objects.replace_status(pool)
    job = objects.get("GenerationJob", "lighthouse")
    job["status"] = {
        "phase": "Running",
        "reason": "Running",
        "attempts": 1,
        "worker": {"pod": "sd15-7xk2p", "node": "gpu-a100-0", "gpu": "GPU-3f2c0b1e"},
        "progress": {"percent": 42, "step": 13, "totalSteps": 30},
        "artifacts": [
            {
                "name": "image-0.png",
                "url": ARTIFACT,
                "mediaType": "image/png",
                "sizeBytes": 412345,
                "sha256": SHA256,
            }
        ],
    }
    objects.replace_status(job)
    return namespace


def table(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def test_get_shows_the_columns(cluster: Any, applied: str) -> None:
    output = cluster.kubectl("get", "wp,gj", "-n", applied).stdout
    pools, jobs = output.strip().split("\n\n")
    assert table(pools)[0] == ["NAME", "READY", "DESIRED", "QUEUE", "RUNNING", "REASON", "AGE"]
    assert table(pools)[1][:6] == ["workerpool.gpufleet.io/sd15", "2", "3", "7", "4", "WorkersStarting"]
    rows = {row[0]: row for row in table(jobs)}
    assert table(jobs)[0] == ["NAME", "PHASE", "POOL", "PROGRESS", "REASON", "QUEUE", "WORKER", "AGE"]
    assert rows["generationjob.gpufleet.io/lighthouse"][1:6] == [
        "Running",
        "sd15",
        "42",
        "Running",
        "sd15-7xk2p",
    ]
    # A job the operator has not seen yet prints blank cells (only POOL and AGE), not errors.
    assert rows["generationjob.gpufleet.io/lighthouse-winter"][1] == "sd15"
    assert len(rows["generationjob.gpufleet.io/lighthouse-winter"]) == 3


def test_a_queued_job_shows_its_reason_and_queue_position(
    cluster: Any, objects: Objects, applied: str
) -> None:
    job = objects.get("GenerationJob", "lighthouse-winter")
    job["status"] = {"phase": "Queued", "reason": "Queued", "queuePosition": 3, "attempts": 0}
    objects.replace_status(job)
    output = cluster.kubectl("get", "gj", "lighthouse-winter", "-n", applied).stdout
    header, row = table(output)
    assert row[:5] == ["lighthouse-winter", "Queued", "sd15", "Queued", "3"]
    assert header[header.index("REASON") + 1] == "QUEUE"


def test_wide_output_shows_the_first_artifact(cluster: Any, applied: str) -> None:
    output = cluster.kubectl("get", "gj", "lighthouse", "-n", applied, "-o", "wide").stdout
    header, row = table(output)
    assert header[-3:] == ["TASK", "MODEL", "ARTIFACT"]
    assert row[-3:] == ["text-to-image", "tiny-sd", ARTIFACT]


def test_category_and_short_names(cluster: Any, applied: str) -> None:
    listed = cluster.kubectl("get", "gpufleet", "-n", applied, "-o", "name").stdout.split()
    kinds = {"GenerationJob": "generationjob", "WorkerPool": "workerpool"}
    assert sorted(listed) == sorted(
        f"{kinds[d['kind']]}.gpufleet.io/{d['metadata']['name']}" for d in example_manifests()
    )
    for short in ("gj", "genjob"):
        assert "lighthouse" in cluster.kubectl("get", short, "-n", applied, "-o", "name").stdout


def test_scale_changes_spec_replicas(cluster: Any, objects: Objects, applied: str) -> None:
    cluster.kubectl("scale", "wp/sd15", "--replicas=3", "-n", applied)
    assert objects.get("WorkerPool", "sd15")["spec"]["replicas"] == 3
    scale = json.loads(
        cluster.kubectl("get", "wp/sd15", "--subresource=scale", "-n", applied, "-o", "json").stdout
    )
    assert scale["spec"]["replicas"] == 3
    assert scale["status"] == {"replicas": 2, "selector": "gpufleet.io/pool=sd15"}


def test_scale_refuses_negative_replicas(cluster: Any, applied: str) -> None:
    result = cluster.kubectl("scale", "wp/sd15", "--replicas=-1", "-n", applied, check=False)
    assert result.returncode != 0
    assert "replicas" in result.stderr


def test_kubectl_apply_refuses_forbidden_fields(cluster: Any, applied: str) -> None:
    manifest = (
        (EXAMPLES / "workerpool.yaml")
        .read_text()
        .replace("    labels:\n      team: studio\n", "    serviceAccountName: admin\n")
    )
    assert "serviceAccountName" in manifest
    result = cluster.kubectl("apply", "-n", applied, "-f", "-", input=manifest, check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.template.serviceAccountName"' in result.stderr
