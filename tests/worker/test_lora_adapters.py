"""LoRAs as adapters on one resident base pipeline: real diffusers + peft on CPU with a tiny
random-weight Stable Diffusion pipeline and two random LoRAs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpufleet.api.inputs import JobInput, Task
from gpufleet_worker.config import ModelSpec
from gpufleet_worker.models import Generation, Pipeline
from tests.worker.tinymodels import save_tiny_lora, save_tiny_pipeline

pytest.importorskip("peft", reason="the diffusers extra is not installed")

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = save_tiny_pipeline(tmp_path_factory.mktemp("base"))
    return {
        "base": base,
        "red": save_tiny_lora(base, tmp_path_factory.mktemp("red"), seed=1),
        "blue": save_tiny_lora(base, tmp_path_factory.mktemp("blue"), seed=2),
    }


def lora(name: str, files: dict[str, Path]) -> ModelSpec:
    return ModelSpec(name=name, source=f"file://{files[name]}", vram=2**20, base="base")


def draw(pipeline: Pipeline, seed: int = 4) -> bytes:
    job_input = JobInput.model_validate(
        {"prompt": "a square", "width": 64, "height": 64, "steps": 2, "seed": seed}
    )
    outputs = pipeline.run(Generation(Task.TEXT_TO_IMAGE, job_input, seed), lambda *_, **__: None)
    (image,) = outputs.files
    return image.data


def test_two_loras_on_one_base_draw_each_as_that_lora_alone_even_at_once(files: dict[str, Path]) -> None:
    from gpufleet_worker.models.diffusers_pipeline import DiffusersPipeline

    shared = DiffusersPipeline(str(files["base"]), "cpu")
    red, blue = shared.attach_lora(lora("red", files)), shared.attach_lora(lora("blue", files))
    alone = {}
    for name in ("red", "blue"):
        own = DiffusersPipeline(str(files["base"]), "cpu")
        alone[name] = draw(own.attach_lora(lora(name, files)))
    plain = draw(DiffusersPipeline(str(files["base"]), "cpu"))

    assert draw(red) == alone["red"] and draw(blue) == alone["blue"]
    assert len({alone["red"], alone["blue"], plain}) == 3  # each adapter changes what is drawn
    assert draw(shared) == plain  # the base itself, with its LoRAs attached, draws as before

    # Runs of both adapters and of the base at once on the one pipeline: none sees another's.
    work = [red, blue, shared] * 3
    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        drawn = list(pool.map(draw, work))
    wanted = [alone["red"], alone["blue"], plain] * 3
    assert drawn == wanted
    assert set(shared.pipeline.get_list_adapters()["unet"]) == {"red", "blue"}

    shared.detach_lora("red")  # idle: deleted at once
    assert shared.pipeline.get_list_adapters()["unet"] == ["blue"]
    assert draw(blue) == alone["blue"] and draw(shared) == plain
