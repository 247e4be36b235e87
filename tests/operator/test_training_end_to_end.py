"""Train, then serve, on the local control plane: a LoRA train job through the operator (its
loss, checkpoints and weights in the job's status), then the trained LoRA declared as a model
of a pool on top of its base, drawing a text-to-image job; and a train job whose worker is
SIGKILLed mid-run resuming, as the operator's second attempt, from its newest checkpoint."""

from __future__ import annotations

import hashlib
import io
import os
import signal
from typing import Any

import pytest
from PIL import Image

from gpufleet.localcluster.processes import pod_process_ids
from gpufleet.localcluster.waiting import wait_for
from tests.operator.conftest import BUCKET
from tests.operator.test_tasks_end_to_end import artifact_bytes, code_under_test
from tests.worker.tinymodels import save_tiny_pipeline

pytest.importorskip("peft", reason="the diffusers extra is not installed")

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3, pytest.mark.slow]

STEPS, CHECKPOINT_EVERY = 6, 3
RESUMED_STEPS, RESUMED_CHECKPOINT_EVERY = 20, 5


def put_dataset(s3_server: Any, prefix: str) -> None:
    client = s3_server.client()
    for name, colour in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        image = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(image, "PNG")
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.png", Body=image.getvalue())
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{name}.txt", Body=f"a {name} square".encode())


def trainer_pool(fleet: Any, s3_server: Any, models_dir: Any, tasks: list[str], replicas: int = 1) -> Any:
    """A pool "trainer" of a tiny diffusers base "sd" (its directory returned), and the dataset
    under <namespace>/data/."""
    base = save_tiny_pipeline(models_dir)
    fleet.pool(
        "trainer",
        replicas=replicas,
        runtime="diffusers",
        models=[{"name": "sd", "source": f"file://{base}", "vram": "256Mi"}],
        tasks=tasks,
        max_jobs_per_gpu=1,
        **code_under_test(),
    )
    put_dataset(s3_server, f"{fleet.namespace}/data/")
    return base


def training_input(fleet: Any, steps: int, checkpoint_every: int) -> dict[str, Any]:
    return {
        "dataset": {"prefix": f"s3://{BUCKET}/{fleet.namespace}/data/"},
        "maxSteps": steps,
        "checkpointEverySteps": checkpoint_every,
        "resolution": 64,
        "rank": 4,
        "learningRate": 0.01,
    }


def test_a_lora_trains_through_the_operator_then_a_pool_serves_it(
    fleet: Any, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = trainer_pool(fleet, s3_server, tmp_path_factory.mktemp("models"), ["train", "text-to-image"])
    training = training_input(fleet, STEPS, CHECKPOINT_EVERY)
    fleet.job("lora", pool="trainer", task="train", model="sd", input={"seed": 5, "training": training})
    fleet.job(
        "empty",
        pool="trainer",
        task="train",
        model="sd",
        input={"seed": 5, "training": training | {"dataset": {"prefix": f"s3://{BUCKET}/nothing/"}}},
    )

    job = fleet.wait_phase("lora", "Succeeded", "Failed", timeout=600)
    status = job["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["progress"]["step"] == STEPS and status["progress"]["totalSteps"] == STEPS
    trained = status["training"]
    assert trained["epoch"] == STEPS // 2 and trained["smoothedLoss"] > 0 and trained["learningRate"] > 0
    assert [c["step"] for c in trained["checkpoints"]] == [3, 6]
    prefix = f"s3://{BUCKET}/{fleet.namespace}/lora/"
    for checkpoint in trained["checkpoints"]:
        assert checkpoint["url"] == f"{prefix}checkpoints/step-{checkpoint['step']}/"
        bucket, key = (checkpoint["url"] + "checkpoint.json").removeprefix("s3://").split("/", 1)
        data = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == checkpoint["sha256"]
    weights = trained["weights"]
    assert weights["url"] == prefix + "pytorch_lora_weights.safetensors"
    assert [a["name"] for a in status["artifacts"]] == ["pytorch_lora_weights.safetensors"]
    lora_file = tmp_path_factory.mktemp("loras") / "colours.safetensors"
    lora_file.write_bytes(artifact_bytes(s3_server, weights))

    empty = fleet.wait_phase("empty", "Succeeded", "Failed", timeout=300)["status"]
    assert (empty["phase"], empty["reason"]) == ("Failed", "InvalidInput")
    assert "training.dataset" in empty["message"] and "no images with captions" in empty["message"]

    fleet.pool(
        "served",
        runtime="diffusers",
        models=[
            {"name": "sd", "source": f"file://{base}", "vram": "256Mi"},
            {"name": "sd-colours", "source": f"file://{lora_file}", "vram": "16Mi", "base": "sd"},
        ],
        tasks=["text-to-image"],
        **code_under_test(),
    )
    fleet.job("draw", pool="served", model="sd-colours", size=64, steps=3, seed=9)
    drawn = fleet.wait_phase("draw", "Succeeded", "Failed", timeout=600)["status"]
    assert drawn["phase"] == "Succeeded", drawn.get("message")
    (image,) = drawn["artifacts"]
    assert Image.open(io.BytesIO(artifact_bytes(s3_server, image))).size == (64, 64)


def newest_complete_checkpoint(s3_server: Any, prefix: str) -> int:
    """The step of the newest checkpoint folder holding its checkpoint.json (written last)."""
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "checkpoints/")
    keys = [item["Key"] for item in listed.get("Contents", []) if item["Key"].endswith("/checkpoint.json")]
    return max((int(key.split("/step-")[1].split("/")[0]) for key in keys), default=0)


def test_a_train_job_whose_worker_is_killed_resumes_from_its_newest_checkpoint(
    fleet: Any, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    trainer_pool(fleet, s3_server, tmp_path_factory.mktemp("models"), ["train"], replicas=2)
    training = training_input(fleet, RESUMED_STEPS, RESUMED_CHECKPOINT_EVERY)
    fleet.job(
        "resumed",
        pool="trainer",
        task="train",
        model="sd",
        input={"seed": 5, "training": training},
        retry={"maxAttempts": 3, "backoffSeconds": 1},
    )

    def past_step_ten(job: dict[str, Any]) -> bool:
        status = job.get("status", {})
        checkpoints = (status.get("training") or {}).get("checkpoints", [])
        return status.get("phase") == "Running" and any(c["step"] >= 10 for c in checkpoints)

    running = fleet.wait_job("resumed", past_step_ten, 600, what="a checkpoint at step 10 or later")
    assert running["status"]["attempts"] == 1
    first_worker = running["status"]["worker"]["pod"]
    pids = pod_process_ids(first_worker, "gpufleet-worker")
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # as a lost node: no goodbye to the operator
    # Nothing writes checkpoints now: the newest complete one is where attempt 2 must resume.
    prefix = f"{fleet.namespace}/resumed/"
    newest = newest_complete_checkpoint(s3_server, prefix)
    assert newest >= 10

    done = fleet.wait_phase("resumed", "Succeeded", "Failed", timeout=600)["status"]
    assert done["phase"] == "Succeeded", done.get("message")
    # A second attempt ran, on the other worker: the kill landed before the first could finish.
    assert done["attempts"] == 2 and done["worker"]["pod"] != first_worker
    assert done["progress"]["step"] == RESUMED_STEPS
    trained = done["training"]
    assert trained["resumedFromStep"] == newest
    # Every checkpoint of the job is listed: the ones of attempt 1 found again, then its own.
    steps = list(range(RESUMED_CHECKPOINT_EVERY, RESUMED_STEPS + 1, RESUMED_CHECKPOINT_EVERY))
    assert [c["step"] for c in trained["checkpoints"]] == steps
    for checkpoint in trained["checkpoints"]:
        assert checkpoint["url"] == f"s3://{BUCKET}/{prefix}checkpoints/step-{checkpoint['step']}/"
    weights = trained["weights"]
    assert weights["url"] == f"s3://{BUCKET}/{prefix}pytorch_lora_weights.safetensors"
    artifact_bytes(s3_server, weights)  # its bytes match its sha256 and size
    events = wait_for(
        lambda: {
            e.reason: e.message
            for e in fleet.core.list_namespaced_event(
                fleet.namespace, field_selector="involvedObject.name=resumed"
            ).items
        },
        lambda found: {"Retrying", "Completed"} <= found.keys(),
        60,
        what="the job's Retrying and Completed Events",
    )
    assert "attempt 2 of 3" in events["Retrying"]
