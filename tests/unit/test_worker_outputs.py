"""Every artifact is checked before it is recorded (gpufleet_worker.outputs)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from gpufleet.api.capabilities import BUILTIN_MODEL_TASKS
from gpufleet_worker.config import ModelSpec
from gpufleet_worker.models import SAFETENSORS, OutputFile, encode_png, load_pipeline, model_kind
from gpufleet_worker.outputs import InvalidOutput, check_output


def safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"unet.lora_A.weight": torch.ones(2, 2)})


SVG_OK = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="3"><path d="M0 0 L1 1"/></svg>'


@pytest.mark.parametrize(
    "file",
    [
        OutputFile("a.png", encode_png(Image.new("L", (4, 3))), "image/png", (4, 3)),
        OutputFile("a.png", encode_png(Image.new("RGB", (9, 9))), "image/png"),
        OutputFile("image.svg", SVG_OK, "image/svg+xml", (4, 3)),
        OutputFile("masks.json", json.dumps({"masks": []}).encode(), "application/json"),
        OutputFile("answer.txt", "réponse".encode(), "text/plain"),
        OutputFile("answer.txt", b"", "text/plain"),
        OutputFile("pytorch_lora_weights.safetensors", safetensors_bytes(), SAFETENSORS),
    ],
)
def test_well_formed_artifacts_pass(file: OutputFile) -> None:
    check_output(file)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        (OutputFile("a.png", b"\x89PNG\r\n\x1a\nbroken", "image/png"), "a.png: not a readable PNG"),
        (
            OutputFile("a.png", encode_png(Image.new("L", (4, 4))), "image/png", (4, 3)),
            "a.png: 4x4, expected 4x3",
        ),
        (OutputFile("image.svg", b"<svg", "image/svg+xml"), "image.svg: not well-formed XML"),
        (OutputFile("image.svg", b"<html/>", "image/svg+xml"), "image.svg: the root element is html"),
        (
            OutputFile("image.svg", SVG_OK, "image/svg+xml", (5, 3)),
            "image.svg: width/height 4x3, expected 5x3",
        ),
        (
            OutputFile("image.svg", b'<!DOCTYPE svg [<!ENTITY a "aa">]>' + SVG_OK, "image/svg+xml"),
            "image.svg: an SVG with a DOCTYPE is refused",
        ),
        (OutputFile("masks.json", b"{", "application/json"), "masks.json: not JSON"),
        (OutputFile("answer.txt", b"\xff\xfe\xfa", "text/plain"), "answer.txt: not UTF-8"),
        (OutputFile("x.bin", b"", "application/octet-stream"), "x.bin: no check for media type"),
        (OutputFile("w.safetensors", b"\x08\x00", SAFETENSORS), "w.safetensors: not a readable safetensors"),
    ],
)
def test_malformed_artifacts_are_refused_naming_the_file(file: OutputFile, message: str) -> None:
    with pytest.raises(InvalidOutput) as refused:
        check_output(file)
    assert str(refused.value).startswith(message)


def test_the_builtin_models_do_what_the_api_says_they_do() -> None:
    for name, tasks in BUILTIN_MODEL_TASKS.items():
        pipeline = load_pipeline(ModelSpec(name=name, source=f"builtin://{name}", vram="1Mi"), "cpu")
        assert pipeline.tasks == tasks, name


def test_a_model_directory_is_told_apart_by_its_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no saved model"):
        model_kind(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "sam"}')
    assert model_kind(tmp_path) == "mask-generation"
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    assert model_kind(tmp_path) == "vision-language"
    (tmp_path / "model_index.json").write_text("{}")
    assert model_kind(tmp_path) == "diffusers"


def test_a_local_output_prefix_lists_and_reads_back_what_was_written(tmp_path) -> None:
    """Checkpoints are found again under a file:/// output prefix as under an s3:// one."""
    from gpufleet_worker.artifacts import ArtifactStore

    store = ArtifactStore(s3_client=None, local_root=tmp_path)
    prefix = f"file://{tmp_path}/job/"
    store.put(prefix + "checkpoints/step-5/", "checkpoint.json", b"{}", "application/json")
    store.put(prefix, "weights.safetensors", b"w", "application/octet-stream")
    assert store.list_uris(prefix) == [
        f"{prefix}checkpoints/step-5/checkpoint.json",
        f"{prefix}weights.safetensors",
    ]
    assert store.list_uris(prefix + "missing/") == []
    assert store.read(f"{prefix}checkpoints/step-5/checkpoint.json", 10) == b"{}"
    with pytest.raises(ValueError, match="over the limit"):
        store.read(f"{prefix}weights.safetensors", 0)
    with pytest.raises(ValueError, match="outside the worker's localOutputRoot"):
        store.list_uris("file:///etc/")
