"""The models accept the examples and refuse what the API server refuses, with the same words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gpufleet.api import models
from gpufleet.api.inputs import MAX_PROMPT_CHARS, JobInput
from gpufleet.api.quantity import Quantity, parse_quantity
from gpufleet.api.testing import edited, error_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "pool": REPO / "examples" / "workerpool.yaml",
    "job": REPO / "examples" / "text-to-image.yaml",
    "i2i": REPO / "examples" / "image-to-image.yaml",
    "inpaint": REPO / "examples" / "inpaint.yaml",
    "segment": REPO / "examples" / "segment.yaml",
    "vectorize": REPO / "examples" / "vectorize.yaml",
    "caption": REPO / "examples" / "caption.yaml",
    "train": REPO / "examples" / "train-lora.yaml",
}
CASES = yaml.safe_load((REPO / "tests" / "api" / "invalid_manifests.yaml").read_text())
LONG_PROMPT = "x" * (MAX_PROMPT_CHARS + 1)


def example(base: str) -> dict[str, Any]:
    return yaml.safe_load(EXAMPLES[base].read_text())


def manifest_for(case: dict[str, Any]) -> dict[str, Any]:
    values = {k: (LONG_PROMPT if v == "LONG_PROMPT" else v) for k, v in case.get("set", {}).items()}
    return edited(example(case["base"]), set=values, remove=case.get("remove", ()))


def model_for(manifest: dict[str, Any]) -> type[models.WorkerPool | models.GenerationJob]:
    return models.WorkerPool if manifest["kind"] == "WorkerPool" else models.GenerationJob


@pytest.mark.parametrize("base", EXAMPLES)
def test_examples_are_valid_and_round_trip(base: str) -> None:
    manifest = example(base)
    parsed = model_for(manifest).model_validate(manifest)
    assert model_for(manifest).model_validate(models.to_manifest(parsed)) == parsed


def test_the_table_is_big_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert {c["base"] for c in CASES} == set(EXAMPLES)


@pytest.mark.parametrize("case", [c for c in CASES if not c.get("update")], ids=lambda c: c["id"])
def test_models_refuse_what_the_api_server_refuses(case: dict[str, Any]) -> None:
    manifest = manifest_for(case)
    with pytest.raises(ValidationError) as refused:
        model_for(manifest).model_validate(manifest)
    text = error_text(refused.value)
    if "rule" in case:
        assert case["rule"] in text
    else:
        # A duplicate entry is reported at the list here and at the entry by the API server.
        field = case["field"]
        assert field in text or field.rsplit("[", 1)[0] in text


def test_error_text_uses_api_server_paths() -> None:
    manifest = edited(example("pool"), set={"spec.models.0.vram": "2GB"})
    with pytest.raises(ValidationError) as refused:
        models.WorkerPool.model_validate(manifest)
    assert error_text(refused.value).startswith("spec.models[0].vram")


def test_field_names_are_the_design_contract() -> None:
    """The wire names users write (DESIGN.md's API sketch), including maxJobsPerGPU."""
    pool = models.to_manifest(models.WorkerPool.model_validate(example("pool")))
    assert set(pool["spec"]) >= {
        "runtime",
        "image",
        "models",
        "tasks",
        "gpu",
        "replicas",
        "autoscaling",
        "template",
    }
    assert set(pool["spec"]["gpu"]) == {"count", "minMemory", "products", "maxJobsPerGPU"}
    assert set(pool["spec"]["autoscaling"]) == {
        "minReplicas",
        "maxReplicas",
        "targetJobsPerWorker",
        "scaleUpStabilizationSeconds",
        "scaleDownStabilizationSeconds",
        "idleSecondsBeforeZero",
    }
    job = models.to_manifest(models.GenerationJob.model_validate(example("job")))
    assert set(job["spec"]) == {
        "poolRef",
        "task",
        "model",
        "input",
        "vram",
        "priority",
        "timeoutSeconds",
        "retry",
        "output",
        "ttlSecondsAfterFinished",
        "cancel",
    }


def test_job_status_reads_the_design_sketch() -> None:
    status = models.GenerationJobStatus.model_validate(
        {
            "phase": "Succeeded",
            "attempts": 1,
            "worker": {"pod": "sd15-7xk2p", "node": "gpu-a100-0", "gpu": "GPU-3f2c0b1e"},
            "progress": {"percent": 100, "step": 30, "totalSteps": 30},
            "startTime": "2026-11-22T10:00:03Z",
            "completionTime": "2026-11-22T10:00:41Z",
            "artifacts": [
                {
                    "name": "image-0.png",
                    "url": "s3://gpufleet-artifacts/studio/lighthouse-1/image-0.png",
                    "mediaType": "image/png",
                    "sizeBytes": 412345,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                }
            ],
            "reason": "Completed",
            "message": "2 images in 38s on gpu-a100-0",
            "conditions": [],
            "observedGeneration": 1,
        }
    )
    assert status.phase is models.JobPhase.SUCCEEDED
    assert status.completion_time - status.start_time == timedelta(seconds=38)


def test_timestamps_are_utc_whole_seconds() -> None:
    local = datetime(2026, 11, 22, 12, 0, 3, 999_999, tzinfo=timezone(timedelta(hours=2)))
    status = models.GenerationJobStatus(start_time=local)
    assert status.start_time == datetime(2026, 11, 22, 10, 0, 3, tzinfo=UTC)
    assert status.model_dump(mode="json", by_alias=True)["startTime"] == "2026-11-22T10:00:03Z"
    with pytest.raises(ValidationError, match="timezone"):
        models.GenerationJobStatus(start_time=datetime(2026, 11, 22))


@pytest.mark.parametrize(
    ("vram", "ok"),
    [
        ("24Gi", True),
        (2147483648, True),
        ("1Pi", True),
        ("1025Ti", False),
        ("0", False),
        (0, False),
        ("-1Gi", False),
        ("1e1.5", False),
        ("1e999", False),
        (True, False),
        (2.5, False),
        ("24 Gi", False),
    ],
)
def test_vram_quantities(vram: object, ok: bool) -> None:
    data = {"name": "m", "source": "builtin://m", "vram": vram}
    if ok:
        assert parse_quantity(models.ServedModel.model_validate(data).vram) > Quantity.parse("0")
    else:
        with pytest.raises(ValidationError, match="vram"):
            models.ServedModel.model_validate(data)


def test_quantities_keep_their_spelling() -> None:
    model = models.ServedModel.model_validate({"name": "m", "source": "builtin://m", "vram": "16384Mi"})
    assert model.vram == "16384Mi"
    assert parse_quantity(model.vram) == Quantity.parse("16Gi")


def test_duplicate_entries_are_refused_where_the_api_server_refuses_them() -> None:
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "R",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(ValidationError, match="duplicates type 'Ready'"):
        models.WorkerPoolStatus.model_validate({"conditions": [condition, condition]})
    with pytest.raises(ValidationError, match="duplicates value 'a'"):
        models.WorkerStatus.model_validate({"pod": "p", "loadedModels": ["a", "a"]})


def test_pixel_budget_message_gives_the_numbers() -> None:
    with pytest.raises(ValidationError, match=r"2048x2048 is 4194304"):
        JobInput(prompt="x", width=2048, height=2048)


def test_whole_objects_ignore_server_fields_but_not_unknown_spec_fields() -> None:
    manifest = example("job") | {"metadata": {"name": "a", "uid": "u", "managedFields": []}}
    assert models.GenerationJob.model_validate(manifest).metadata["uid"] == "u"
    with pytest.raises(ValidationError, match=r"spec\.bogus"):
        models.GenerationJob.model_validate(edited(manifest, set={"spec.bogus": 1}))


def test_api_version_is_group_and_version() -> None:
    assert f"{models.GROUP}/{models.VERSION}" == models.API_VERSION
