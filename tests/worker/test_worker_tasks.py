"""Every task through a worker process over HTTP, against the real S3 server: SAM and LLaVA
model directories (tiny, random weights), builtin://vtracer and a diffusers pipeline."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any
from xml.etree import ElementTree

import pytest
from PIL import Image

from gpufleet.localcluster.s3server import S3Server
from gpufleet_worker import protocol as p
from tests.worker.test_worker_process import events
from tests.worker.tinymodels import save_tiny_llava, save_tiny_pipeline, save_tiny_sam, scene

pytest.importorskip("transformers", reason="the diffusers extra is not installed")

pytestmark = [pytest.mark.s3, pytest.mark.slow]

BUCKET = "tasks"
MiB = 2**20


@pytest.fixture(scope="module")
def worker(s3_server: S3Server, start_worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if BUCKET not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}:
        s3_server.create_bucket(BUCKET)
    picture = io.BytesIO()
    scene(96, 64).save(picture, format="PNG")
    s3_server.client().put_object(Bucket=BUCKET, Key="in/scene.png", Body=picture.getvalue())
    huge = io.BytesIO()
    Image.new("L", (4097, 4096)).save(huge, format="PNG")  # one column over the pixel limit
    s3_server.client().put_object(Bucket=BUCKET, Key="in/huge.png", Body=huge.getvalue())
    models = tmp_path_factory.mktemp("models")
    return start_worker(
        {
            "name": "worker-tasks",
            # Preloaded: the inventory shows what each model does once it has loaded.
            "models": [
                {"name": "sam", "source": f"file://{save_tiny_sam(models)}", "vram": "64Mi", "preload": True},
                {
                    "name": "llava",
                    "source": f"file://{save_tiny_llava(models)}",
                    "vram": "64Mi",
                    "preload": True,
                },
                {
                    "name": "sd",
                    "source": f"file://{save_tiny_pipeline(models)}",
                    "vram": "128Mi",
                    "preload": True,
                },
                {"name": "vtracer", "source": "builtin://vtracer", "vram": "1Mi", "preload": True},
            ],
            "simulatedGpu": {"memory": "4Gi"},
        },
        env=s3_server.env(),
    )


def body(job: str, task: str, model: str, **input_fields: Any) -> dict[str, Any]:
    return {
        "jobId": f"studio/{job}",
        "attempt": 1,
        "task": task,
        "model": model,
        "input": {"image": {"object": f"s3://{BUCKET}/in/scene.png"}, "seed": 3} | input_fields,
        "vramBytes": 64 * MiB,
        "outputUri": f"s3://{BUCKET}/out/{job}/",
    }


def run(worker: Any, request: dict[str, Any]) -> tuple[dict, list[dict]]:
    response = worker.client.post(p.JOBS, json=request)
    assert response.status_code == 201, response.text
    stream = events(worker.client, response.json()["runId"])
    progress = [data["progress"] for _, name, data in stream if name == "progress"]
    return stream[-1][2]["status"], progress


def stored(s3_server: S3Server, artifact: dict[str, Any]) -> bytes:
    key = artifact["url"].removeprefix(f"s3://{BUCKET}/")
    response = s3_server.client().get_object(Bucket=BUCKET, Key=key)
    data = response["Body"].read()
    assert response["ContentType"] == artifact["mediaType"]
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"] and len(data) == artifact["sizeBytes"]
    return data


def test_the_inventory_lists_each_models_tasks(worker: Any) -> None:
    models = {m["name"]: m["tasks"] for m in worker.client.get(p.INVENTORY).json()["models"]}
    assert models == {
        "sam": ["segment"],
        "llava": ["caption"],
        "sd": ["image-to-image", "inpaint", "text-to-image", "train"],
        "vtracer": ["vectorize"],
    }


def test_segment_writes_masks_of_the_input_size_and_their_json(worker: Any, s3_server: S3Server) -> None:
    request = body("masks", "segment", "sam", segment={"points": [{"x": 30, "y": 48}], "multimask": True})
    status, progress = run(worker, request)
    assert status["phase"] == "Succeeded", status["message"]
    assert status["message"].startswith("3 masks of 1 object in ")
    assert [(s["step"], s["totalSteps"], s["unit"], s["stage"]) for s in progress] == [
        (1, 4, "stages", "prepare"),
        (2, 4, "stages", "encode image"),
        (3, 4, "stages", "decode masks"),
        (4, 4, "stages", "write masks"),
    ]
    artifacts = {a["name"]: a for a in status["artifacts"]}
    assert sorted(artifacts) == ["mask-0-0.png", "mask-0-1.png", "mask-0-2.png", "masks.json"]
    for name in ("mask-0-0.png", "mask-0-1.png", "mask-0-2.png"):
        assert artifacts[name]["mediaType"] == "image/png"
        assert Image.open(io.BytesIO(stored(s3_server, artifacts[name]))).size == (96, 64)
    described = json.loads(stored(s3_server, artifacts["masks.json"]))
    assert artifacts["masks.json"]["mediaType"] == "application/json"
    assert [m["file"] for m in described["masks"]] == ["mask-0-0.png", "mask-0-1.png", "mask-0-2.png"]
    assert all(
        m["rle"]["size"] == [64, 96] and sum(m["rle"]["counts"]) == 96 * 64 for m in described["masks"]
    )


def test_a_point_outside_the_image_fails_the_run_naming_it(worker: Any) -> None:
    request = body("outside", "segment", "sam", segment={"points": [{"x": 500, "y": 10}]})
    status, _ = run(worker, request)
    assert (status["phase"], status["reason"]) == ("Failed", "InputRefused")
    assert status["message"] == "input.segment.points[0]: (500, 10) is outside the 96x64 image"
    assert status["artifacts"] == []


def test_an_image_over_the_pixel_limit_fails_the_run(worker: Any) -> None:
    request = body("huge", "segment", "sam", segment={"points": [{"x": 5, "y": 5}]})
    request["input"]["image"] = {"object": f"s3://{BUCKET}/in/huge.png"}
    status, _ = run(worker, request)
    assert (status["phase"], status["reason"]) == ("Failed", "InputFetchFailed")
    assert status["message"] == "input.image: 4097x4096 is over the limit of 16777216 pixels"


def test_a_task_the_model_cannot_do_is_refused_with_what_it_does(worker: Any) -> None:
    response = worker.client.post(p.JOBS, json=body("wrong", "caption", "sam"))
    assert response.status_code == 422
    assert response.json() == {
        "reason": "UnsupportedTask",
        "message": "task: model sam does not do caption; it does segment",
    }


def test_a_segment_without_prompts_is_refused_naming_the_field(worker: Any) -> None:
    response = worker.client.post(p.JOBS, json=body("no-prompts", "segment", "sam"))
    assert response.status_code == 422
    assert response.json()["message"] == "input.segment is required for task segment"


def test_caption_streams_tokens_and_answers_in_the_result_and_a_text_file(
    worker: Any, s3_server: S3Server
) -> None:
    request = body("answer", "caption", "llava", prompt="what is this image ?", caption={"maxNewTokens": 5})
    status, progress = run(worker, request)
    assert status["phase"] == "Succeeded", status["message"]
    assert [(s["step"], s["totalSteps"], s["unit"]) for s in progress] == [
        (n, 5, "tokens") for n in range(1, len(progress) + 1)
    ]
    (artifact,) = status["artifacts"]
    assert (artifact["name"], artifact["mediaType"]) == ("answer.txt", "text/plain")
    text = stored(s3_server, artifact).decode("utf-8")
    assert text and status["result"] == {"text": text, "truncated": False}
    assert status["progress"]["text"] == text  # the text so far, at the end the whole (short) answer


def test_vectorize_writes_an_svg_that_parses(worker: Any, s3_server: S3Server) -> None:
    status, progress = run(worker, body("svg", "vectorize", "vtracer", vectorize={"mode": "polygon"}))
    assert status["phase"] == "Succeeded", status["message"]
    assert [s["stage"] for s in progress] == ["prepare", "trace", "encode"]
    (artifact,) = status["artifacts"]
    assert (artifact["name"], artifact["mediaType"]) == ("image.svg", "image/svg+xml")
    root = ElementTree.fromstring(stored(s3_server, artifact))
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and (root.get("width"), root.get("height")) == (
        "96",
        "64",
    )


def test_inpaint_on_a_diffusers_pipeline(worker: Any, s3_server: S3Server) -> None:
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (20, 30, 60, 60))
    data = io.BytesIO()
    mask.save(data, format="PNG")
    s3_server.client().put_object(Bucket=BUCKET, Key="in/mask.png", Body=data.getvalue())
    request = body(
        "inpaint",
        "inpaint",
        "sd",
        prompt="a red boat",
        mask={"object": f"s3://{BUCKET}/in/mask.png"},
        width=64,
        height=64,
        steps=4,
        strength=0.5,
    )
    status, progress = run(worker, request)
    assert status["phase"] == "Succeeded", status["message"]
    assert [(s["step"], s["totalSteps"], s["unit"]) for s in progress] == [(1, 2, "steps"), (2, 2, "steps")]
    (artifact,) = status["artifacts"]
    assert Image.open(io.BytesIO(stored(s3_server, artifact))).size == (64, 64)
