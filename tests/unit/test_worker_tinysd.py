"""The built-in smoke-test model: deterministic for a seed, every task it claims, stoppable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpufleet.api.inputs import JobInput, Task
from gpufleet_worker.models import Cancelled, Generation, total_steps
from gpufleet_worker.models.tinysd import TinySD, ddim_timesteps


@pytest.fixture(scope="module")
def model() -> TinySD:
    return TinySD("cpu")


def generate(model: TinySD, seed: int = 1, task: Task = Task.TEXT_TO_IMAGE, **fields: object) -> list:
    job_input = JobInput.model_validate(
        {"prompt": "a red boat", "width": 64, "height": 64, "steps": 4} | fields
    )
    image = Image.new("RGB", (64, 64), (250, 20, 20)) if task is not Task.TEXT_TO_IMAGE else None
    mask = None
    if task is Task.INPAINT:
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    steps: list[tuple[int, int]] = []
    job = Generation(task, job_input, seed, image, mask)
    images = model.generate(job, lambda step, total: steps.append((step, total)))
    assert steps == [(i, total_steps(job)) for i in range(1, total_steps(job) + 1)]
    return [np.asarray(i) for i in images]


def test_same_seed_same_pixels_other_seed_or_prompt_other_pixels(model: TinySD) -> None:
    (first,) = generate(model, seed=3)
    (again,) = generate(model, seed=3)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, generate(model, seed=4)[0])
    assert not np.array_equal(first, generate(model, seed=3, prompt="a green forest")[0])


def test_weights_do_not_depend_on_the_global_random_state(model: TinySD) -> None:
    import torch

    torch.manual_seed(999)
    assert np.array_equal(generate(TinySD("cpu"), seed=3)[0], generate(model, seed=3)[0])


def test_a_batch_gives_distinct_images_of_the_asked_size(model: TinySD) -> None:
    images = generate(model, numImages=3, width=72, height=64)
    assert [i.shape for i in images] == [(64, 72, 3)] * 3
    assert not np.array_equal(images[0], images[1])


def test_image_to_image_stays_near_its_input(model: TinySD) -> None:
    (light,) = generate(model, task=Task.IMAGE_TO_IMAGE, strength=0.1, steps=10)
    assert total_steps(Generation(Task.IMAGE_TO_IMAGE, JobInput(steps=10, strength=0.1), 0)) == 1
    red = light[..., 0].astype(int).mean() - light[..., 2].astype(int).mean()
    assert red > 100  # the red input still shows


def test_inpaint_repaints_only_the_masked_half(model: TinySD) -> None:
    (inpainted,) = generate(model, task=Task.INPAINT, strength=0.5, steps=8)
    right = slice(40, 64)  # clear of the blurred seam
    left = slice(0, 24)
    kept = inpainted[:, right].astype(int)
    assert kept[..., 0].mean() - kept[..., 2].mean() > 100
    assert not np.array_equal(inpainted[:, left], inpainted[:, right][:, :24])


def test_a_step_hook_that_raises_stops_the_run(model: TinySD) -> None:
    seen: list[int] = []

    def stop_at_two(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            raise Cancelled()

    job = Generation(Task.TEXT_TO_IMAGE, JobInput(prompt="x", width=64, height=64, steps=50), 1)
    with pytest.raises(Cancelled):
        model.generate(job, stop_at_two)
    assert seen == [1, 2]


def test_ddim_timesteps_descend_within_the_training_range() -> None:
    for steps in (1, 7, 50, 250):
        schedule = ddim_timesteps(steps)
        assert len(schedule) == steps
        assert schedule == sorted(schedule, reverse=True)
        assert schedule[-1] > 0 and schedule[0] < 1000
