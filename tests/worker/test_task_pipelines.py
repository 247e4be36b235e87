"""Segment, caption and vectorize through the worker's real pipeline code: tiny random-weight
SAM, SAM 2 and LLaVA models saved with save_pretrained, and vtracer on a real picture."""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers", reason="the diffusers extra is not installed")

from gpufleet.api.inputs import MAX_PROGRESS_TEXT_CHARS, JobInput, Task
from gpufleet_worker.config import ModelSpec
from gpufleet_worker.fetch import InputRefused
from gpufleet_worker.models import Cancelled, Generation, OutputFile, Outputs, load_pipeline, total_steps
from gpufleet_worker.models.segment import rle
from gpufleet_worker.outputs import check_output
from tests.worker.tinymodels import (
    save_tiny_llava,
    save_tiny_sam,
    save_tiny_sam2,
    save_tiny_sam2_video,
    scene,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as the worker does on CPU


SAM_SAVERS = {"sam": save_tiny_sam, "sam2": save_tiny_sam2, "sam2_video": save_tiny_sam2_video}
# The transformers class each saved config's model_type loads.
SAM_CLASSES = {"sam": "SamModel", "sam2": "Sam2Model", "sam2_video": "Sam2Model"}


@pytest.fixture(scope="module", params=sorted(SAM_SAVERS))
def sam(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Each segment test runs on SAM and on SAM 2 (saved from its image and its video model)."""
    directory = SAM_SAVERS[request.param](tmp_path_factory.mktemp("models"))
    pipeline = load_pipeline(ModelSpec(name="tiny-sam", source=f"file://{directory}", vram="64Mi"), "cpu")
    assert type(pipeline.model).__name__ == SAM_CLASSES[request.param]
    return pipeline


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = save_tiny_llava(tmp_path_factory.mktemp("models"))
    return load_pipeline(ModelSpec(name="tiny-llava", source=f"file://{directory}", vram="64Mi"), "cpu")


@pytest.fixture(scope="module")
def vtracer() -> Any:
    return load_pipeline(ModelSpec(name="vtracer", source="builtin://vtracer", vram="1Mi"), "cpu")


def run(pipeline: Any, task: Task, fields: dict[str, Any], image: Image.Image | None = None, **more: Any):
    job = Generation(task, JobInput.model_validate(fields), 7, image or scene(), **more)
    progress: list[tuple[int, int, str | None]] = []
    outputs = pipeline.run(job, lambda step, total, stage=None, **_: progress.append((step, total, stage)))
    for file in outputs.files:
        check_output(file)
    return outputs, progress


def by_name(outputs: Outputs) -> dict[str, OutputFile]:
    return {f.name: f for f in outputs.files}


def decode_rle(encoded: dict[str, Any]) -> np.ndarray:
    height, width = encoded["size"]
    values = np.concatenate([np.full(n, i % 2, dtype=np.uint8) for i, n in enumerate(encoded["counts"])])
    return values.reshape((width, height)).T


# --- segment ----------------------------------------------------------------------------------


def test_points_give_one_object_with_masks_of_the_input_size(sam: Any) -> None:
    image = scene(96, 64)
    points = [{"x": 30, "y": 48}, {"x": 5, "y": 5, "label": "background"}]
    outputs, progress = run(sam, Task.SEGMENT, {"segment": {"points": points}}, image)
    assert sam.tasks == {Task.SEGMENT}
    assert [p[2] for p in progress] == ["prepare", "encode image", "decode masks", "write masks"]
    assert [p[:2] for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    files = by_name(outputs)
    assert sorted(files) == ["mask-0-0.png", "masks.json"]
    mask = np.asarray(Image.open(io.BytesIO(files["mask-0-0.png"].data)))
    assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0, 255}
    described = json.loads(files["masks.json"].data)
    assert (described["width"], described["height"]) == (96, 64)
    (entry,) = described["masks"]
    assert entry["file"] == "mask-0-0.png" and entry["object"] == 0
    assert isinstance(entry["score"], float)
    assert entry["area"] == int((mask > 0).sum())
    assert np.array_equal(decode_rle(entry["rle"]), (mask > 0).astype(np.uint8))
    if entry["area"]:
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 64
    assert outputs.summary == "1 mask of 1 object"


def test_each_box_is_an_object_and_multimask_gives_three_each(sam: Any) -> None:
    boxes = [{"x0": 2, "y0": 2, "x1": 40, "y1": 30}, {"x0": 50, "y0": 20, "x1": 95, "y1": 63}]
    outputs, _ = run(sam, Task.SEGMENT, {"segment": {"boxes": boxes, "multimask": True}})
    names = sorted(f.name for f in outputs.files if f.name.endswith(".png"))
    assert names == [f"mask-{o}-{k}.png" for o in range(2) for k in range(3)]
    assert all(f.size == (96, 64) for f in outputs.files if f.name.endswith(".png"))


def test_points_with_a_box_refine_that_object(sam: Any) -> None:
    segment = {"boxes": [{"x0": 2, "y0": 2, "x1": 60, "y1": 60}], "points": [{"x": 30, "y": 48}]}
    outputs, _ = run(sam, Task.SEGMENT, {"segment": segment})
    assert sorted(by_name(outputs)) == ["mask-0-0.png", "masks.json"]


@pytest.mark.parametrize(
    ("segment", "named"),
    [
        (
            {"points": [{"x": 10, "y": 10}, {"x": 96, "y": 10}]},
            r"input\.segment\.points\[1\]: \(96, 10\) is outside the 96x64 image",
        ),
        (
            {"boxes": [{"x0": 0, "y0": 0, "x1": 20, "y1": 65}]},
            r"input\.segment\.boxes\[0\]: .* reaches outside the 96x64 image",
        ),
    ],
)
def test_prompts_outside_the_image_are_refused_naming_the_prompt(sam: Any, segment: dict, named: str) -> None:
    with pytest.raises(InputRefused, match=named):
        run(sam, Task.SEGMENT, {"segment": segment})


def test_rle_starts_with_the_zeros_run_in_column_major_order() -> None:
    mask = np.array([[1, 0], [1, 1]], dtype=bool)  # columns: [1, 1], [0, 1]
    assert rle(mask) == {"size": [2, 2], "counts": [0, 2, 1, 1]}
    assert rle(np.zeros((2, 3), dtype=bool))["counts"] == [6]


# --- caption ----------------------------------------------------------------------------------


def test_caption_streams_tokens_as_progress_and_answers_in_text(llava: Any) -> None:
    fields = {"prompt": "what is this image ?", "caption": {"maxNewTokens": 6}}
    outputs, progress = run(llava, Task.CAPTION, fields)
    assert llava.tasks == {Task.CAPTION}
    assert progress == [(n, 6, None) for n in range(1, len(progress) + 1)] and 1 <= len(progress) <= 6
    assert outputs.text and outputs.text == by_name(outputs)["answer.txt"].data.decode()
    assert by_name(outputs)["answer.txt"].media_type == "text/plain"
    again, _ = run(llava, Task.CAPTION, fields)
    assert again.text == outputs.text  # greedy decoding


def test_caption_progress_carries_the_text_generated_so_far(llava: Any) -> None:
    texts: list[str | None] = []
    fields = {"prompt": "what is this image ?", "caption": {"maxNewTokens": 12}}
    job = Generation(Task.CAPTION, JobInput.model_validate(fields), 7, scene())
    outputs = llava.run(job, lambda step, total, stage=None, text=None, **_: texts.append(text))
    assert len(texts) >= 3 and all(isinstance(text, str) for text in texts)
    for before, after in itertools.pairwise(texts):
        assert after.startswith(before)  # type: ignore[union-attr]
    assert len(set(texts)) >= 3  # it grows as tokens arrive
    assert texts[-1] == outputs.text  # the last report is the whole (short) answer


def test_caption_progress_text_is_decoded_from_the_last_tokens_only() -> None:
    from gpufleet_worker.models.vision_language import TokenProgress

    decoded: list[list[int]] = []
    reports: list[tuple[int, str]] = []

    def decode(tokens: list[int]) -> str:
        decoded.append(tokens)
        return " " + "".join(chr(ord("a") + t % 26) for t in tokens) + "\ufffd"

    streamer = TokenProgress(lambda step, total, text=None, **_: reports.append((step, text)), 2000, decode)
    streamer.put(torch.tensor([[5, 6, 7]]))  # the prompt: no report
    for token in range(MAX_PROGRESS_TEXT_CHARS + 5):
        streamer.put(torch.tensor([token]))
    assert len(reports) == MAX_PROGRESS_TEXT_CHARS + 5 and reports[0] == (1, "a")
    assert max(len(tokens) for tokens in decoded) == MAX_PROGRESS_TEXT_CHARS
    assert decoded[-1] == list(range(5, MAX_PROGRESS_TEXT_CHARS + 5))
    # leading spaces and an unfinished multi-byte character are left out
    assert reports[-1][1] == decode(decoded[-1])[1:-1]


def test_sampling_follows_the_seed(llava: Any) -> None:
    fields = {"caption": {"maxNewTokens": 8, "temperature": 1.5, "topP": 0.95}}
    texts = {run(llava, Task.CAPTION, fields)[0].text for _ in range(2)}
    assert len(texts) == 1
    other = {
        llava.run(
            Generation(Task.CAPTION, JobInput.model_validate(fields), seed, scene()), lambda *a, **k: None
        ).text
        for seed in range(8, 14)
    }
    assert len(other | texts) > 1


def test_caption_takes_several_images(llava: Any) -> None:
    fields = {"prompt": "what is this ?", "caption": {"maxNewTokens": 3}}
    outputs, _ = run(llava, Task.CAPTION, fields, extra_images=(scene(40, 40), scene(64, 64)))
    assert outputs.text


def test_cancelling_stops_generation_at_the_next_token(llava: Any) -> None:
    seen: list[int] = []

    def stop(step: int, total: int, stage: str | None = None, **_: Any) -> None:
        seen.append(step)
        if step == 2:
            raise Cancelled()

    job = Generation(Task.CAPTION, JobInput.model_validate({"caption": {"maxNewTokens": 50}}), 1, scene())
    with pytest.raises(Cancelled):
        llava.run(job, stop)
    assert seen == [1, 2]


def test_total_steps_is_the_token_budget() -> None:
    job = Generation(Task.CAPTION, JobInput.model_validate({"caption": {"maxNewTokens": 40}}), 1)
    assert total_steps(job) == 40


# --- vectorize --------------------------------------------------------------------------------


def svg_of(outputs: Outputs) -> ElementTree.Element:
    (file,) = outputs.files
    assert (file.name, file.media_type) == ("image.svg", "image/svg+xml")
    return ElementTree.fromstring(file.data)


def test_vectorize_traces_a_picture_into_an_svg_of_its_size(vtracer: Any) -> None:
    outputs, progress = run(vtracer, Task.VECTORIZE, {}, scene(96, 64))
    root = svg_of(outputs)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == ("96", "64")
    paths = root.findall("{http://www.w3.org/2000/svg}path")
    fills = {p.get("fill") for p in paths}
    assert len(paths) >= 4 and len(fills) >= 4  # sky, sea, sun, boat
    assert [p[2] for p in progress] == ["prepare", "trace", "encode"]


def test_vectorize_options_change_the_tracing(vtracer: Any) -> None:
    def paths(options: dict[str, Any]) -> list[str]:
        root = svg_of(run(vtracer, Task.VECTORIZE, {"vectorize": options}, scene())[0])
        return [p.get("d") or "" for p in root.iter("{http://www.w3.org/2000/svg}path")]

    spline = paths({"mode": "spline"})
    assert any("C" in d for d in spline)  # curves
    assert not any("C" in d for d in paths({"mode": "polygon"}))
    pixel = paths({"mode": "pixel"})
    assert pixel != spline
    binary = svg_of(run(vtracer, Task.VECTORIZE, {"vectorize": {"colorMode": "binary"}}, scene())[0])
    assert {p.get("fill") for p in binary.iter("{http://www.w3.org/2000/svg}path")} <= {
        "#000000",
        "#000",
        "black",
    }
    coarse = paths({"pathPrecision": 0})
    assert not any(re.search(r"\d\.\d", d) for d in coarse)


# --- models that fail to load -----------------------------------------------------------------


@pytest.mark.parametrize("saver", [save_tiny_sam, save_tiny_sam2])
def test_a_sam_directory_without_weights_fails_to_load(tmp_path: Path, saver: Any) -> None:
    directory = saver(tmp_path)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(OSError, match=r"safetensors|pytorch_model"):
        load_pipeline(ModelSpec(name="broken", source=f"file://{directory}", vram="64Mi"), "cpu")


def test_a_directory_of_a_model_that_is_not_image_text_to_text_fails_to_load(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises((ValueError, OSError), match=r"bert|BertConfig|processor|tokenizer"):
        load_pipeline(ModelSpec(name="bert", source=f"file://{tmp_path / 'bert'}", vram="64Mi"), "cpu")


def test_a_sam2_model_without_torchvision_fails_to_load_naming_it(tmp_path: Path) -> None:
    """In a fresh interpreter where torchvision cannot be imported (transformers looks for it
    once, when it is imported)."""
    directory = save_tiny_sam2(tmp_path)
    script = f"""
import sys
sys.modules["torchvision"] = None  # imports of it fail, and find_spec says it is not there
from gpufleet_worker.config import ModelSpec
from gpufleet_worker.models import load_pipeline
try:
    load_pipeline(ModelSpec(name="sam2", source="file://{directory}", vram="64Mi"), "cpu")
except ValueError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(directory) in done.stdout and "Missing optional dependencies: torchvision" in done.stdout
