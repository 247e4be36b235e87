"""The API server refuses bad WorkerPools and GenerationJobs, naming the field and the rule."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.api.inputs import MAX_PROMPT_CHARS
from gpufleet.api.testing import Objects, Refused, edited

pytestmark = pytest.mark.cluster

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
CASES = yaml.safe_load((Path(__file__).parent / "invalid_manifests.yaml").read_text())
LONG_PROMPT = "x" * (MAX_PROMPT_CHARS + 1)


def example(base: str) -> dict[str, Any]:
    manifest = yaml.safe_load(EXAMPLES[base].read_text())
    # Unique names: update cases create objects, and every case shares the namespace fixture's.
    manifest["metadata"]["name"] = f"{manifest['metadata']['name']}-{uuid.uuid4().hex[:6]}"
    return manifest


def with_edits(manifest: dict[str, Any], case: dict[str, Any], key: str = "set") -> dict[str, Any]:
    values = {k: (LONG_PROMPT if v == "LONG_PROMPT" else v) for k, v in case.get(key, {}).items()}
    return edited(manifest, set=values, remove=case.get("remove", ()) if key == "set" else ())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_refused_with_the_field_and_rule(objects: Objects, case: dict[str, Any]) -> None:
    base = example(case["base"])
    if case.get("update"):
        created = objects.create(with_edits(base, case, key="create_with"))
        attempt = with_edits(created, case)
        with pytest.raises(Refused) as refused:
            objects.replace(attempt)
    else:
        with pytest.raises(Refused) as refused:
            objects.create(with_edits(base, case))
    assert refused.value.status in (400, 422)
    assert case["field"] in refused.value.message
    if "rule" in case:
        assert case["rule"] in refused.value.message


def test_examples_are_accepted_as_they_are(objects: Objects) -> None:
    for base in EXAMPLES:
        created = objects.create(example(base))
        assert created["metadata"]["generation"] == 1


def test_cancel_is_the_one_editable_field(objects: Objects) -> None:
    job = objects.create(example("job"))
    cancelled = objects.replace(edited(job, set={"spec.cancel": True}))
    assert cancelled["spec"]["cancel"] is True
    assert cancelled["metadata"]["generation"] == 2


def test_status_writes_do_not_trip_the_spec_rules(objects: Objects) -> None:
    job = objects.create(example("job"))
    job["status"] = {"phase": "Queued", "queuePosition": 0, "observedGeneration": 1}
    written = objects.replace_status(job)
    assert written["status"]["phase"] == "Queued"
    with pytest.raises(Refused, match=r"status\.phase"):
        objects.replace_status(edited(written, set={"status.phase": "Exploded"}))


def test_server_side_defaults_are_the_model_defaults(objects: Objects) -> None:
    job = example("i2i")
    created = objects.create(job)
    assert created["spec"]["priority"] == 0 and created["spec"]["cancel"] is False
    assert created["spec"]["input"]["guidanceScale"] == 7.5
    assert created["spec"]["timeoutSeconds"] == 3600
    assert "vram" not in created["spec"]  # estimated by the operator, never defaulted here


def test_unknown_fields_are_pruned_when_not_strict(objects: Objects) -> None:
    """Without strict validation, a forbidden field never reaches the stored object."""
    pool = edited(example("pool"), set={"spec.template.serviceAccountName": "admin"})
    created = objects.create(pool, validation="Ignore")
    assert "serviceAccountName" not in created["spec"]["template"]
