"""Every task end to end on the local control plane: pools of tiny real-architecture models
(SAM, SAM 2, LLaVA, a diffusers pipeline) and builtin://vtracer, jobs through the operator,
and the artifacts in S3 checked."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from PIL import Image

from gpufleet.api.inputs import MAX_PROGRESS_TEXT_CHARS, MAX_RESULT_TEXT_CHARS
from tests.operator.conftest import BUCKET
from tests.worker.tinymodels import save_tiny_llava, save_tiny_pipeline, save_tiny_sam, save_tiny_sam2, scene

pytest.importorskip("transformers", reason="the diffusers extra is not installed")

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sam": save_tiny_sam(root),
        "sam2": save_tiny_sam2(root),
        "llava": save_tiny_llava(root),
        "sd": save_tiny_pipeline(root),
    }


def put_png(s3_server: Any, key: str, image: Image.Image) -> str:
    data = io.BytesIO()
    image.save(data, format="PNG")
    s3_server.client().put_object(Bucket=BUCKET, Key=key, Body=data.getvalue())
    return f"s3://{BUCKET}/{key}"


def artifact_bytes(s3_server: Any, artifact: dict[str, Any]) -> bytes:
    bucket, key = artifact["url"].removeprefix("s3://").split("/", 1)
    data = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"] and len(data) == artifact["sizeBytes"]
    return data


def code_under_test() -> dict[str, Any]:
    """Worker pods are processes started by the kubelet stand-in with a clean environment; they
    import the code under test as the operator process does when PYTHONPATH points at it."""
    path = os.environ.get("PYTHONPATH")
    return {"template": {"env": [{"name": "PYTHONPATH", "value": path}]}} if path else {}


def task_job(fleet: Any, name: str, pool: str, task: str, model: str, job_input: dict[str, Any]) -> None:
    """A job of any task: Fleet.job's defaults are text-to-image ones, so input is replaced whole."""
    fleet.job(name, pool=pool, task=task, model=model, input=job_input, vram="512Mi")


def test_every_task_runs_through_the_operator_and_its_artifacts_check_out(fleet, s3_server, model_dirs):
    fleet.pool(
        "studio",
        runtime="diffusers",
        models=[
            {"name": "sam", "source": f"file://{model_dirs['sam']}", "vram": "256Mi", "tasks": ["segment"]},
            {"name": "sam2", "source": f"file://{model_dirs['sam2']}", "vram": "256Mi", "tasks": ["segment"]},
            {
                "name": "llava",
                "source": f"file://{model_dirs['llava']}",
                "vram": "256Mi",
                "tasks": ["caption"],
            },
            {"name": "sd", "source": f"file://{model_dirs['sd']}", "vram": "256Mi", "tasks": ["inpaint"]},
        ],
        tasks=["segment", "caption", "inpaint"],
        max_jobs_per_gpu=5,
        **code_under_test(),
    )
    fleet.pool(
        "vectorize",
        models=[{"name": "vtracer", "source": "builtin://vtracer", "vram": "1Mi"}],
        tasks=["vectorize"],
        **code_under_test(),
    )
    image = put_png(s3_server, f"{fleet.namespace}/in/scene.png", scene(96, 64))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (20, 30, 60, 60))
    mask_ref = put_png(s3_server, f"{fleet.namespace}/in/mask.png", mask)

    points = [{"x": 30, "y": 48}, {"x": 5, "y": 5, "label": "background"}]
    task_job(
        fleet, "seg", "studio", "segment", "sam", {"image": {"object": image}, "segment": {"points": points}}
    )
    box = {"x0": 10, "y0": 8, "x1": 70, "y1": 60}
    task_job(
        fleet,
        "seg2",
        "studio",
        "segment",
        "sam2",
        {"image": {"object": image}, "segment": {"boxes": [box], "multimask": True}},
    )
    # Long enough (seconds on a CPU) for the operator's progress writes to show its text.
    task_job(
        fleet,
        "cap",
        "studio",
        "caption",
        "llava",
        {"image": {"object": image}, "prompt": "what is this image ?", "caption": {"maxNewTokens": 384}},
    )
    task_job(
        fleet,
        "inp",
        "studio",
        "inpaint",
        "sd",
        {
            "image": {"object": image},
            "mask": {"object": mask_ref},
            "prompt": "a red boat",
            "width": 64,
            "height": 64,
            "steps": 4,
            "strength": 0.5,
        },
    )
    task_job(fleet, "svg", "vectorize", "vectorize", "vtracer", {"image": {"object": image}})
    # A task the pool accepts but the named model cannot do: refused before any dispatch.
    task_job(fleet, "wrong", "studio", "caption", "sam", {"image": {"object": image}})

    def text_or_end(job: dict[str, Any]) -> bool:
        status = job.get("status", {})
        return bool(status.get("progress", {}).get("text")) or status.get("phase") in ("Succeeded", "Failed")

    generating = fleet.wait_job("cap", text_or_end, 300, what="caption text before the end")["status"]
    assert generating["phase"] == "Running", generating.get("message")
    partial = generating["progress"]["text"]
    assert 0 < generating["progress"]["step"] < 384 and "result" not in generating

    wrong = fleet.wait_job("wrong", lambda j: j.get("status", {}).get("reason") == "TaskNotServed", 60)
    assert wrong["status"]["phase"] == "Pending" and wrong["status"].get("attempts", 0) == 0
    assert "cannot do 'caption'; it does ['segment']" in wrong["status"]["message"]

    done = {
        name: fleet.wait_phase(name, "Succeeded", "Failed", timeout=300)
        for name in ("seg", "seg2", "cap", "inp", "svg")
    }
    for name, job in done.items():
        assert job["status"]["phase"] == "Succeeded", (name, job["status"].get("message"))

    segment = {a["name"]: a for a in done["seg"]["status"]["artifacts"]}
    assert sorted(segment) == ["mask-0-0.png", "masks.json"]
    assert segment["mask-0-0.png"]["mediaType"] == "image/png"
    assert Image.open(io.BytesIO(artifact_bytes(s3_server, segment["mask-0-0.png"]))).size == (96, 64)
    described = json.loads(artifact_bytes(s3_server, segment["masks.json"]))
    assert described["masks"][0]["rle"]["size"] == [64, 96]

    segment2 = {a["name"]: a for a in done["seg2"]["status"]["artifacts"]}
    assert sorted(segment2) == ["mask-0-0.png", "mask-0-1.png", "mask-0-2.png", "masks.json"]
    for k in range(3):
        mask = Image.open(io.BytesIO(artifact_bytes(s3_server, segment2[f"mask-0-{k}.png"])))
        assert mask.size == (96, 64)
    described = json.loads(artifact_bytes(s3_server, segment2["masks.json"]))
    assert [m["file"] for m in described["masks"]] == [f"mask-0-{k}.png" for k in range(3)]

    (answer,) = done["cap"]["status"]["artifacts"]
    assert (answer["name"], answer["mediaType"]) == ("answer.txt", "text/plain")
    text = artifact_bytes(s3_server, answer).decode("utf-8")
    assert 0 < len(text) <= MAX_RESULT_TEXT_CHARS
    assert done["cap"]["status"]["result"]["text"] == text  # the answer is on the job itself too
    assert partial in text  # the text seen while it ran is part of the answer
    final = done["cap"]["status"]["progress"]["text"]  # the end of the answer, bounded
    assert text.endswith(final) and 0 < len(final) <= MAX_PROGRESS_TEXT_CHARS

    (svg,) = done["svg"]["status"]["artifacts"]
    assert svg["mediaType"] == "image/svg+xml"
    root = ElementTree.fromstring(artifact_bytes(s3_server, svg))
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and (root.get("width"), root.get("height")) == (
        "96",
        "64",
    )

    (painted,) = done["inp"]["status"]["artifacts"]
    assert Image.open(io.BytesIO(artifact_bytes(s3_server, painted))).size == (64, 64)
