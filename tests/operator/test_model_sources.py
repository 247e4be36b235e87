"""Model sources end to end on the local control plane: a tiny diffusers pipeline served from
s3:// (uploaded to MinIO here) and from pvc:// (a PersistentVolume and claim bound by the real
PV controller), jobs through the operator; and a model whose s3:// prefix does not exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker import protocol
from gpufleet_worker.sources import local_digest
from tests.cluster.test_local_kubelet import bound_claim
from tests.operator.test_tasks_end_to_end import artifact_bytes, code_under_test
from tests.worker.tinymodels import save_tiny_pipeline

pytest.importorskip("diffusers", reason="the diffusers extra is not installed")

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3, pytest.mark.slow]

MODELS_BUCKET = "gpufleet-models"


@pytest.fixture(scope="module")
def models_bucket(s3_server: Any) -> str:
    return s3_server.create_bucket(MODELS_BUCKET)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("weights"))


def upload_folder(s3_server: Any, folder: Path, prefix: str) -> None:
    s3 = s3_server.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.put_object(
            Bucket=MODELS_BUCKET,
            Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
            Body=path.read_bytes(),
        )


def test_a_pool_serves_models_from_s3_and_from_a_claim(
    fleet, s3_server, models_bucket, tiny_pipeline, core: client.CoreV1Api
):
    prefix = f"{fleet.namespace}/tiny-sd"
    upload_folder(s3_server, tiny_pipeline, prefix)
    bound_claim(core, fleet.namespace, "weights", tiny_pipeline.parent)
    fleet.pool(
        "sources",
        runtime="diffusers",
        models=[
            {
                "name": "from-s3",
                "source": f"s3://{MODELS_BUCKET}/{prefix}",
                "vram": "256Mi",
                "digest": local_digest(tiny_pipeline),  # checked on the downloaded files
            },
            {"name": "from-pvc", "source": f"pvc://weights/{tiny_pipeline.name}", "vram": "256Mi"},
        ],
        modelCache={"size": "1Gi"},
        **code_under_test(),
    )
    for model in ("from-s3", "from-pvc"):
        fleet.job(f"job-{model}", pool="sources", model=model, vram="256Mi", size=64, steps=2)
    for model in ("from-s3", "from-pvc"):
        done = fleet.wait_phase(f"job-{model}", "Succeeded", "Failed", timeout=300)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        (artifact,) = done["status"]["artifacts"]
        assert artifact_bytes(s3_server, artifact).startswith(b"\x89PNG")

    # The download stays in the worker's cache: the inventory counts it, within the pool's size.
    (inventory,) = fleet.inventories("sources")
    size = sum(p.stat().st_size for p in tiny_pipeline.rglob("*") if p.is_file())
    assert inventory.model_cache is not None
    assert (inventory.model_cache.used_bytes, inventory.model_cache.capacity_bytes) == (size, 2**30)
    on_disk = {m.name: (m.on_disk, m.disk_bytes) for m in inventory.models}
    assert on_disk == {"from-s3": (True, size), "from-pvc": (True, None)}

    # The worker pod mounts the claim read-only and the cache as an emptyDir of the pool's size.
    (pod,) = fleet.worker_pods("sources")
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["claim-0"].persistent_volume_claim.claim_name == "weights"
    assert volumes["claim-0"].persistent_volume_claim.read_only is True
    assert volumes["model-cache"].empty_dir.size_limit == "1Gi"


def test_a_model_whose_s3_prefix_does_not_exist_fails_naming_the_model_and_the_cause(fleet, models_bucket):
    fleet.pool(
        "ghosts",
        runtime="diffusers",
        models=[{"name": "ghost", "source": f"s3://{MODELS_BUCKET}/no/such/prefix", "vram": "256Mi"}],
        **code_under_test(),
    )

    def ghost(inventories: list[protocol.Inventory]) -> protocol.ModelInfo | None:
        for inventory in inventories:
            for model in inventory.models:
                if model.name == "ghost" and model.state is protocol.ModelState.FAILED:
                    return model
        return None

    cause = (
        f"model ghost: s3://{MODELS_BUCKET}/no/such/prefix: no objects under "
        f"s3://{MODELS_BUCKET}/no/such/prefix/ (the prefix is empty or does not exist)"
    )
    # Models load when a job first needs them: the job finds the source missing and fails
    # with the cause, not retried.
    fleet.job("haunted", pool="ghosts", model="ghost")
    done = fleet.wait_phase("haunted", "Failed", "Succeeded", timeout=180)
    assert (done["status"]["phase"], done["status"]["reason"]) == ("Failed", "ModelFailed"), done["status"]
    assert cause in done["status"]["message"]
    assert done["status"]["attempts"] == 1
    failed = wait_for(lambda: ghost(fleet.inventories("ghosts")), bool, 60, what="model ghost Failed")
    assert failed is not None and failed.message == cause
