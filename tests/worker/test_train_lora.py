"""LoRA training on the worker as a process: real diffusers + peft on CPU, a tiny random-weight
Stable Diffusion pipeline, and a dataset in the real S3 server."""

from __future__ import annotations

import hashlib
import io
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker import protocol as p
from tests.worker.test_worker_process import events, wait_until_done
from tests.worker.tinymodels import save_tiny_pipeline

pytestmark = [pytest.mark.s3, pytest.mark.slow]

BUCKET = "training"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}
STEPS, CHECKPOINT_EVERY = 20, 5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipeline, and a copy whose UNet holds a NaN weight (its loss is NaN)."""
    from diffusers import UNet2DConditionModel

    good = save_tiny_pipeline(tmp_path_factory.mktemp("tiny"))
    broken = save_tiny_pipeline(tmp_path_factory.mktemp("broken"))
    unet = UNet2DConditionModel.from_pretrained(broken, subfolder="unet")
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    unet.save_pretrained(broken / "unet")
    return {"tiny-sd": good, "broken-sd": broken}


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Any:
    client = s3_server.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        s3_server.create_bucket(BUCKET)
    for name, colour in COLOURS.items():
        image = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(image, "PNG")
        client.put_object(Bucket=BUCKET, Key=f"colours/{name}.png", Body=image.getvalue())
        client.put_object(Bucket=BUCKET, Key=f"colours/{name}.txt", Body=f"a {name} square".encode())
    client.put_object(Bucket=BUCKET, Key="uncaptioned/a.png", Body=b"not looked at")
    client.put_object(Bucket=BUCKET, Key="uncaptioned/notes.md", Body=b"no captions here")
    return client


@pytest.fixture(scope="module")
def launch(s3_server: S3Server, start_worker: Any, models: dict[str, Path]) -> Any:
    def start() -> Any:
        return start_worker(
            {
                "name": "trainer",
                "maxJobsPerGpu": 2,
                "models": [
                    # Preloaded: a run's progress starts at its first step, not at a model load.
                    {"name": name, "source": f"file://{path}", "vram": "512Mi", "preload": True}
                    for name, path in models.items()
                ],
                "simulatedGpu": {"product": "Simulated-A100", "memory": "8Gi"},
            },
            env=s3_server.env(),
        )

    return start


@pytest.fixture(scope="module")
def worker(launch: Any) -> Any:
    return launch()


def train_body(job: str, attempt: int = 1, model: str = "tiny-sd", **training: Any) -> dict[str, Any]:
    settings = {
        "dataset": {"prefix": f"s3://{BUCKET}/colours/"},
        "maxSteps": STEPS,
        "resolution": 64,
        "rank": 4,
        "learningRate": 0.01,
        "checkpointEverySteps": CHECKPOINT_EVERY,
        "samplePrompts": ["a red square"],
        "sampleEverySteps": 10,
    } | training
    return {
        "jobId": f"studio/{job}",
        "attempt": attempt,
        "task": "train",
        "model": model,
        "input": {"seed": 3, "steps": 2, "training": settings},
        "vramBytes": 2**30,
        "outputUri": f"s3://{BUCKET}/out/{job}/",
    }


def submit(worker: Any, body: dict[str, Any]) -> str:
    response = worker.client.post(p.JOBS, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["runId"])


def stored(s3: Any, url: str) -> bytes:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(s3: Any, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def lora_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


@pytest.fixture(scope="module")
def straight(worker: Any, s3: Any) -> tuple[list[p.Progress], p.JobStatus]:
    """A run of 20 steps that nothing interrupts: its progress events and final status."""
    run = submit(worker, train_body("straight"))
    stream = events(worker.client, run, timeout=900)
    progress = [p.Progress.model_validate(data["progress"]) for _, name, data in stream if name == "progress"]
    result = p.JobEvent.model_validate(stream[-1][2]).status
    assert result is not None
    return progress, result


def test_training_lowers_the_loss_and_writes_weights_checkpoints_and_samples(
    straight: tuple[list[p.Progress], p.JobStatus], s3: Any
) -> None:
    progress, result = straight
    assert (result.phase, result.reason) == (p.Phase.SUCCEEDED, p.Reason.COMPLETED), result.message
    steps = [e.step for e in progress]
    # Every step that wrote a checkpoint or samples reports, besides the first and the last.
    assert steps[0] == 1 and steps[-1] == STEPS and steps == sorted(set(steps))
    assert {5, 10, 15, 20} <= set(steps)
    assert {e.total_steps for e in progress} == {STEPS} and progress[-1].percent == 100
    training = [e.training for e in progress]
    assert all(t is not None for t in training)
    first, last = training[0], training[-1]
    assert first is not None and last is not None
    assert first.loss is not None and last.smoothed_loss is not None
    assert last.smoothed_loss < first.loss  # a trivially learnable set, a fixed seed
    assert last.resumed_from_step is None and last.epoch == STEPS // len(COLOURS)
    assert last.steps_per_second and last.steps_per_second > 0 and last.eta_seconds == 0

    assert [c.step for c in last.checkpoints] == [5, 10, 15, 20]
    for checkpoint in last.checkpoints:
        assert checkpoint.url == f"s3://{BUCKET}/out/straight/checkpoints/step-{checkpoint.step}/"
        manifest = stored(s3, checkpoint.url + "checkpoint.json")
        assert hashlib.sha256(manifest).hexdigest() == checkpoint.sha256
        assert set(keys(s3, f"out/straight/checkpoints/step-{checkpoint.step}/")) == {
            f"out/straight/checkpoints/step-{checkpoint.step}/{name}"
            for name in ("checkpoint.json", "lora.safetensors", "training_state.pt")
        }

    names = [a.name for a in result.artifacts]
    assert names == ["sample-10-0.png", "sample-20-0.png", "pytorch_lora_weights.safetensors"]
    for artifact in result.artifacts:
        data = stored(s3, artifact.url)
        assert hashlib.sha256(data).hexdigest() == artifact.sha256 and len(data) == artifact.size_bytes
    assert Image.open(io.BytesIO(stored(s3, result.artifacts[0].url))).size == (64, 64)
    weights = lora_tensors(stored(s3, result.artifacts[-1].url))
    assert weights and all(k.startswith("unet.") and "lora" in k for k in weights)


def test_a_killed_run_resumes_from_its_latest_checkpoint_and_ends_where_an_unbroken_one_does(
    straight: tuple[list[p.Progress], p.JobStatus], launch: Any, s3: Any
) -> None:
    victim = launch()
    run = submit(victim, train_body("killed"))
    wait_for(
        lambda: victim.client.get(p.job_path(p.JOB, run)).json()["progress"]["step"],
        lambda step: step >= 12,
        900,
        interval=0.05,
        what="step 12",
    )
    victim.process.popen.send_signal(signal.SIGKILL)  # the worker dies mid-step, as on a lost node
    victim.process.popen.wait(30)
    complete = [k for k in keys(s3, "out/killed/checkpoints/") if k.endswith("checkpoint.json")]
    latest = max(int(k.split("/step-")[1].split("/")[0]) for k in complete)
    assert latest >= 10

    replacement = launch()
    run = submit(replacement, train_body("killed", attempt=2))
    stream = events(replacement.client, run, timeout=900)
    progress = [p.Progress.model_validate(data["progress"]) for _, name, data in stream if name == "progress"]
    result = p.JobEvent.model_validate(stream[-1][2]).status
    assert result is not None and result.phase == p.Phase.SUCCEEDED, result.message if result else stream
    assert progress[0].step == latest + 1 and progress[-1].step == STEPS  # the count continued
    training = progress[-1].training
    assert training is not None and training.resumed_from_step == latest
    assert [c.step for c in training.checkpoints] == [5, 10, 15, 20]

    # Same optimizer, scheduler and random state from the checkpoint: the same weights as the
    # run that was never interrupted.
    _, unbroken = straight
    resumed = lora_tensors(stored(s3, result.artifacts[-1].url))
    expected = lora_tensors(stored(s3, unbroken.artifacts[-1].url))
    assert resumed.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(resumed[key], tensor, rtol=1e-5, atol=1e-6)


def test_cancel_stops_training_and_keeps_the_checkpoints(worker: Any, s3: Any) -> None:
    run = submit(
        worker, train_body("cancelled", checkpointEverySteps=2, sampleEverySteps=None, samplePrompts=[])
    )
    wait_for(
        lambda: worker.client.get(p.job_path(p.JOB, run)).json()["progress"]["step"],
        lambda step: step >= 2,
        600,
        interval=0.05,
        what="step 2",
    )
    assert worker.client.post(p.job_path(p.JOB_CANCEL, run)).status_code == 200
    status = p.JobStatus.model_validate(wait_until_done(worker.client, run, timeout=300))
    assert (status.phase, status.reason) == (p.Phase.CANCELLED, p.Reason.CANCELLED)
    assert status.progress.step < STEPS
    training = status.progress.training
    assert training is not None and training.checkpoints and training.checkpoints[0].step == 2
    for checkpoint in training.checkpoints:
        manifest = stored(s3, checkpoint.url + "checkpoint.json")
        assert hashlib.sha256(manifest).hexdigest() == checkpoint.sha256


@pytest.mark.parametrize(
    ("dataset", "reason", "words"),
    [
        ({"prefix": f"s3://{BUCKET}/uncaptioned/"}, p.Reason.INPUT_REFUSED, "no images with captions"),
        ({"prefix": f"s3://{BUCKET}/nothing-here/"}, p.Reason.INPUT_REFUSED, "no images with captions"),
        ({"prefix": "s3://no-such-bucket/colours/"}, p.Reason.INPUT_FETCH_FAILED, "NoSuchBucket"),
        ({"manifest": f"s3://{BUCKET}/missing.jsonl"}, p.Reason.INPUT_FETCH_FAILED, "NoSuchKey"),
    ],
    ids=["uncaptioned", "empty", "unreachable-bucket", "missing-manifest"],
)
def test_a_dataset_that_is_empty_or_unreachable_fails_before_any_step(
    worker: Any, s3: Any, dataset: dict[str, str], reason: p.Reason, words: str
) -> None:
    job = f"bad-data-{reason.value.lower()}-{abs(hash(str(dataset))) % 10_000}"
    run = submit(worker, train_body(job, dataset=dataset))
    status = p.JobStatus.model_validate(wait_until_done(worker.client, run, timeout=300))
    assert (status.phase, status.reason) == (p.Phase.FAILED, reason)
    assert "training.dataset" in status.message and words in status.message
    assert status.progress.step == 0 and status.progress.training is None
    assert keys(s3, f"out/{job}/") == []


def test_a_manifest_dataset_trains(worker: Any, s3: Any) -> None:
    lines = [f'{{"image": "s3://{BUCKET}/colours/{n}.png", "caption": "a {n} square"}}' for n in COLOURS]
    s3.put_object(Bucket=BUCKET, Key="colours.jsonl", Body="\n".join(lines).encode())
    body = train_body("manifest", dataset={"manifest": f"s3://{BUCKET}/colours.jsonl"}, maxSteps=2)
    body["input"]["training"] |= {"checkpointEverySteps": 2, "samplePrompts": [], "sampleEverySteps": None}
    status = p.JobStatus.model_validate(wait_until_done(worker.client, submit(worker, body), timeout=600))
    assert status.phase == p.Phase.SUCCEEDED, status.message
    assert status.progress.training and status.progress.training.epoch == 1


def test_a_nan_loss_fails_the_run_with_that_reason(worker: Any) -> None:
    run = submit(worker, train_body("diverged", model="broken-sd"))
    status = p.JobStatus.model_validate(wait_until_done(worker.client, run, timeout=600))
    assert (status.phase, status.reason) == (p.Phase.FAILED, p.Reason.TRAINING_DIVERGED)
    assert "loss became nan at step 1" in status.message


def test_an_unknown_target_module_is_refused_naming_the_field(worker: Any) -> None:
    run = submit(worker, train_body("no-module", targetModules=["to_q", "no_such_layer"]))
    status = p.JobStatus.model_validate(wait_until_done(worker.client, run, timeout=600))
    assert (status.phase, status.reason) == (p.Phase.FAILED, p.Reason.INPUT_REFUSED)
    assert "training.targetModules: no_such_layer" in status.message


def test_the_trained_lora_is_served_on_its_base_and_changes_what_it_draws(
    straight: tuple[list[p.Progress], p.JobStatus],
    s3: Any,
    s3_server: S3Server,
    start_worker: Any,
    models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    _, trained = straight
    weights = tmp_path_factory.mktemp("loras") / "colours.safetensors"
    weights.write_bytes(stored(s3, trained.artifacts[-1].url))
    base = f"file://{models['tiny-sd']}"
    server = start_worker(
        {
            "name": "server",
            "models": [
                {"name": "tiny-sd", "source": base, "vram": "512Mi", "preload": True},
                {
                    "name": "tiny-colours",
                    "source": f"file://{weights}",
                    "vram": "16Mi",
                    "base": "tiny-sd",
                    "preload": True,
                },
            ],
            "simulatedGpu": {"product": "Simulated-A100", "memory": "8Gi"},
        },
        env=s3_server.env(),
    )
    inventory = p.Inventory.model_validate(server.client.get(p.INVENTORY).json())
    served = {m.name: m.model_dump(mode="json", by_alias=True) for m in inventory.models}
    assert served["tiny-colours"]["state"] == "Loaded"
    # One copy of the base on the GPU; the LoRA holds only its own few bytes beside it.
    (gpu,) = inventory.gpus
    assert {m.name: m.vram_bytes for m in gpu.models} == {"tiny-sd": 512 * 2**20, "tiny-colours": 16 * 2**20}
    assert set(served["tiny-colours"]["tasks"]) == {"text-to-image", "image-to-image", "inpaint"}

    images = {}
    for model in ("tiny-sd", "tiny-colours"):
        body = {
            "jobId": f"studio/draw-{model}",
            "attempt": 1,
            "task": "text-to-image",
            "model": model,
            "input": {"prompt": "a red square", "width": 64, "height": 64, "steps": 3, "seed": 11},
            "vramBytes": 2**28,
            "outputUri": f"s3://{BUCKET}/out/draw-{model}/",
        }
        status = p.JobStatus.model_validate(wait_until_done(server.client, submit(server, body), timeout=300))
        assert status.phase == p.Phase.SUCCEEDED, status.message
        images[model] = stored(s3, status.artifacts[0].url)
    assert images["tiny-sd"] != images["tiny-colours"]  # the adapters are applied, not ignored

    refused = server.client.post(p.JOBS, json=train_body("retrain", model="tiny-colours"))
    assert refused.status_code == 422 and refused.json()["reason"] == "UnsupportedTask"
