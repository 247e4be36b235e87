"""Real diffusers loading from a local directory, on a tiny pipeline this test builds and
saves itself (random weights, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "diffusers", reason="the diffusers extra is not installed (pip install 'gpufleet[diffusers]')"
)
pytest.importorskip(
    "transformers", reason="the diffusers extra is not installed (pip install 'gpufleet[diffusers]')"
)

from gpufleet.api.inputs import JobInput, Task
from gpufleet_worker.config import ModelSpec
from gpufleet_worker.models import Cancelled, Generation, load_pipeline
from tests.worker.tinymodels import save_tiny_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    import torch

    torch.set_num_threads(1)  # as the worker does on CPU: shared CI cores thrash with more
    directory = save_tiny_pipeline(tmp_path_factory.mktemp("models"))
    spec = ModelSpec(name="tiny-diffusers", source=f"file://{directory}", vram="256Mi")
    return load_pipeline(spec, "cpu")


def run(pipeline, task: Task = Task.TEXT_TO_IMAGE, seed: int = 1, **fields: object):
    job_input = JobInput.model_validate({"prompt": "a cat", "width": 64, "height": 64, "steps": 3} | fields)
    image = Image.new("RGB", (64, 64), (10, 200, 10)) if task is not Task.TEXT_TO_IMAGE else None
    mask = None
    if task is Task.INPAINT:
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))  # repaint the middle
    steps: list[tuple[int, int]] = []
    job = Generation(task, job_input, seed, image, mask)
    images = pipeline.generate(job, lambda s, t, stage=None: steps.append((s, t)))
    return [np.asarray(i) for i in images], steps


def test_text_to_image_reports_each_step_and_is_deterministic_for_a_seed(pipeline) -> None:
    images, steps = run(pipeline, numImages=2)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert [i.shape for i in images] == [(64, 64, 3)] * 2
    again, _ = run(pipeline, numImages=2)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    other, _ = run(pipeline, seed=2, numImages=2)
    assert not np.array_equal(images[0], other[0])


def test_image_to_image_runs_the_strength_share_of_steps(pipeline) -> None:
    images, steps = run(pipeline, Task.IMAGE_TO_IMAGE, steps=4, strength=0.5)
    assert steps == [(1, 2), (2, 2)]
    assert images[0].shape == (64, 64, 3)


def test_inpaint_runs_the_inpainting_pipeline_over_the_same_weights(pipeline) -> None:
    assert Task.INPAINT in pipeline.tasks
    images, steps = run(pipeline, Task.INPAINT, steps=4, strength=0.75)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert images[0].shape == (64, 64, 3)
    again, _ = run(pipeline, Task.INPAINT, steps=4, strength=0.75)
    assert np.array_equal(images[0], again[0])
    image = Image.new("RGB", (64, 64))
    without_mask = Generation(Task.INPAINT, JobInput(prompt="a boat", width=64, height=64, steps=2), 1, image)
    with pytest.raises(ValueError, match=r"input\.mask is required for inpaint"):
        pipeline.run(without_mask, lambda *a, **k: None)


def test_a_step_hook_that_raises_stops_the_pipeline(pipeline) -> None:
    def stop(step: int, total: int) -> None:
        raise Cancelled()

    job = Generation(Task.TEXT_TO_IMAGE, JobInput(prompt="a cat", width=64, height=64, steps=5), 1)
    with pytest.raises(Cancelled):
        pipeline.generate(job, stop)


def test_a_directory_without_a_pipeline_is_refused(tmp_path: Path) -> None:
    spec = ModelSpec(name="missing", source=f"file://{tmp_path}", vram="1Gi")
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        load_pipeline(spec, "cpu")
