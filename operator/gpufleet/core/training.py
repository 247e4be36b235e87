"""What a train job's status says about its run: the worker's training progress, bounded to
what a GenerationJob's status holds."""

from __future__ import annotations

from typing import Any

import gpufleet_worker.protocol as protocol
from gpufleet.api.models import MAX_ARTIFACTS, MAX_CHECKPOINTS_IN_STATUS

WEIGHTS_ARTIFACT = "pytorch_lora_weights.safetensors"
SAMPLE_PREFIX = "sample-"


def training_status(
    training: protocol.TrainingProgress, artifacts: list[protocol.Artifact] | None = None
) -> dict[str, Any]:
    """status.training from a run's training progress: the latest checkpoints only, and the
    trained weights when ``artifacts`` (a finished run's) holds them."""
    status: dict[str, Any] = {
        "epoch": training.epoch,
        "learningRate": training.learning_rate,
        "checkpoints": [
            {"step": c.step, "url": c.url, "sha256": c.sha256}
            for c in training.checkpoints[-MAX_CHECKPOINTS_IN_STATUS:]
        ],
    }
    optional = {
        "loss": training.loss,
        "smoothedLoss": training.smoothed_loss,
        "stepsPerSecond": training.steps_per_second,
        "etaSeconds": None if training.eta_seconds is None else round(training.eta_seconds),
        "resumedFromStep": training.resumed_from_step,
    }
    status |= {key: value for key, value in optional.items() if value is not None}
    weights = next((a for a in artifacts or [] if a.name == WEIGHTS_ARTIFACT), None)
    if weights is not None:
        status["weights"] = weights.model_dump(mode="json", by_alias=True)
    return status


def bounded_artifacts(artifacts: list[protocol.Artifact]) -> list[dict[str, Any]]:
    """At most MAX_ARTIFACTS artifacts: every one that is not a sample image, then the latest
    samples (a long run's samples are all in the bucket, however many)."""
    kept = [a for a in artifacts if not a.name.startswith(SAMPLE_PREFIX)]
    samples = [a for a in artifacts if a.name.startswith(SAMPLE_PREFIX)]
    room = max(0, MAX_ARTIFACTS - len(kept))
    chosen = samples[len(samples) - room :] if room else []
    return [a.model_dump(mode="json", by_alias=True) for a in [*chosen, *kept][-MAX_ARTIFACTS:]]
