"""A train run's progress as a GenerationJob's status: bounded, and valid against the CRD's model."""

from __future__ import annotations

from gpufleet.api.models import MAX_ARTIFACTS, MAX_CHECKPOINTS_IN_STATUS, GenerationJobStatus
from gpufleet.core.training import WEIGHTS_ARTIFACT, bounded_artifacts, training_status
from gpufleet_worker import protocol

SHA = "ab" * 32
PREFIX = "s3://artifacts/studio/style/"


def artifact(name: str) -> protocol.Artifact:
    return protocol.Artifact(name=name, url=PREFIX + name, media_type="image/png", size_bytes=10, sha256=SHA)


def progress(checkpoints: int, samples: int = 0) -> protocol.TrainingProgress:
    return protocol.TrainingProgress(
        epoch=3,
        loss=0.5,
        smoothed_loss=0.6,
        learning_rate=1e-4,
        steps_per_second=2.5,
        eta_seconds=41.6,
        resumed_from_step=10,
        checkpoints=[
            protocol.Checkpoint(step=5 * (i + 1), url=f"{PREFIX}checkpoints/step-{5 * (i + 1)}/", sha256=SHA)
            for i in range(checkpoints)
        ],
        samples=[artifact(f"sample-{i}-0.png") for i in range(samples)],
    )


def test_the_status_keeps_the_latest_checkpoints_and_validates() -> None:
    status = training_status(progress(checkpoints=MAX_CHECKPOINTS_IN_STATUS + 5))
    steps = [c["step"] for c in status["checkpoints"]]
    assert len(steps) == MAX_CHECKPOINTS_IN_STATUS
    assert steps[-1] == 5 * (MAX_CHECKPOINTS_IN_STATUS + 5) and steps == sorted(steps)
    assert status["etaSeconds"] == 42 and status["resumedFromStep"] == 10
    parsed = GenerationJobStatus.model_validate({"training": status})
    assert parsed.training is not None and parsed.training.smoothed_loss == 0.6
    assert parsed.training.weights is None


def test_a_finished_run_names_its_weights() -> None:
    weights = artifact(WEIGHTS_ARTIFACT).model_copy(update={"media_type": "application/vnd.safetensors"})
    status = training_status(progress(checkpoints=2), [artifact("sample-5-0.png"), weights])
    assert status["weights"]["url"] == PREFIX + WEIGHTS_ARTIFACT
    assert status["weights"]["sha256"] == SHA
    GenerationJobStatus.model_validate({"training": status})


def test_a_run_before_its_first_loss_omits_what_it_does_not_know() -> None:
    status = training_status(protocol.TrainingProgress(epoch=1, learning_rate=0.0))
    assert "loss" not in status and "etaSeconds" not in status
    GenerationJobStatus.model_validate({"training": status})


def test_artifacts_keep_the_weights_and_the_latest_samples_within_the_bound() -> None:
    many = [artifact(f"sample-{i}-0.png") for i in range(MAX_ARTIFACTS + 40)] + [artifact(WEIGHTS_ARTIFACT)]
    kept = bounded_artifacts(many)
    names = [a["name"] for a in kept]
    assert len(kept) == MAX_ARTIFACTS
    assert WEIGHTS_ARTIFACT in names and f"sample-{MAX_ARTIFACTS + 39}-0.png" in names
    assert "sample-0-0.png" not in names
    GenerationJobStatus.model_validate({"artifacts": kept})


def test_few_artifacts_are_kept_as_they_are() -> None:
    few = [artifact("image-0.png"), artifact("image-1.png")]
    assert [a["name"] for a in bounded_artifacts(few)] == ["image-0.png", "image-1.png"]
