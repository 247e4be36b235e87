"""Diffusers pipelines loaded from a local model directory (the ``diffusers`` extra).

Nothing is downloaded: the directory must hold a pipeline saved with ``save_pretrained``
(model_index.json and its components). Text-to-image runs the pipeline itself;
image-to-image and inpaint run the matching pipelines over the same loaded weights; train
fits a LoRA on fresh copies of the directory's weights (train_lora.py). LoRAs attach to a
loaded pipeline as named adapters (``attach_lora``); each run sets the adapter it draws with,
and runs with different adapters take turns (``AdapterGate``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gpufleet.api.capabilities import LORA_TASKS
from gpufleet.api.inputs import Task
from gpufleet.api.servedmodels import FILE_SCHEME

from ..adaptergate import AdapterGate
from ..config import ModelSpec
from . import Generation, ImagePipeline, Outputs, Pipeline, StepHook, total_steps

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


class DiffusersPipeline(ImagePipeline):
    tasks = frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT, Task.TRAIN})

    def __init__(self, directory: str, device: str) -> None:
        try:
            from diffusers import DiffusionPipeline
        except ImportError as error:
            raise RuntimeError(
                "file:// models need the diffusers extra: pip install 'gpufleet[diffusers]'"
            ) from error
        if not (Path(directory) / "model_index.json").is_file():
            raise FileNotFoundError(f"{directory} holds no diffusers pipeline (no model_index.json)")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.pipeline = DiffusionPipeline.from_pretrained(
            directory, local_files_only=True, torch_dtype=dtype
        ).to(device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.device = device
        self.directory = directory
        self.gate = AdapterGate(activate=self._activate, remove=self._remove)

    def attach_lora(self, lora: ModelSpec) -> Pipeline:
        """Loads a LoRA's weights (its file:// source: a .safetensors file, or a folder holding
        pytorch_lora_weights.safetensors) as the adapter named as the model; the returned
        pipeline draws with it."""
        name, weights = lora.name, Path(lora.source.removeprefix(FILE_SCHEME))
        folder, file = (weights.parent, weights.name) if weights.is_file() else (weights, LORA_WEIGHTS)
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{weights} holds no LoRA weights ({LORA_WEIGHTS})")
        with self.gate.changing():
            self.pipeline.load_lora_weights(
                str(folder), weight_name=file, adapter_name=name, local_files_only=True
            )
        return LoraPipeline(self, name)

    def detach_lora(self, name: str) -> None:
        """Deletes adapter ``name`` once no run is drawing on the pipeline."""
        self.gate.detach(name)

    def _activate(self, adapter: str | None) -> None:
        if not any(self.pipeline.get_list_adapters().values()):
            return  # no LoRA attached: the base as loaded
        if adapter is None:
            self.pipeline.disable_lora()
        else:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters([adapter])

    def _remove(self, adapter: str) -> None:
        self.pipeline.delete_adapters([adapter])

    def draw(self, adapter: str | None, job: Generation, on_step: StepHook) -> Outputs:
        """A drawing run with ``adapter`` active (None: the base alone)."""
        with self.gate.using(adapter):
            return super().run(job, on_step)

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        if job.task is Task.TRAIN:
            from .train_lora import train_lora

            return train_lora(self.directory, self.device, job, on_step)
        return self.draw(None, job, on_step)

    def _for_run(self, task: Task) -> Any:
        """A pipeline over the loaded weights with its own scheduler: schedulers keep
        per-run state, so concurrent runs must not share one."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

        auto = {
            Task.TEXT_TO_IMAGE: AutoPipelineForText2Image,
            Task.IMAGE_TO_IMAGE: AutoPipelineForImage2Image,
            Task.INPAINT: AutoPipelineForInpainting,
        }[task]
        pipeline = auto.from_pipe(self.pipeline, scheduler=copy.deepcopy(self.pipeline.scheduler))
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, job: Generation, on_step: StepHook) -> list[Image.Image]:
        spec = job.input
        total = total_steps(job)

        def step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict) -> dict:
            on_step(min(step + 1, total), total)  # raises Cancelled to stop between steps
            return tensors

        arguments: dict[str, Any] = {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt or None,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
            "num_images_per_prompt": spec.num_images,
            # A CPU generator gives the same noise for a seed on every device.
            "generator": torch.Generator().manual_seed(job.seed),
            "callback_on_step_end": step_end,
            "output_type": "pil",
        }
        if job.task is Task.TEXT_TO_IMAGE:
            arguments |= {"width": spec.width, "height": spec.height}
        else:
            if job.image is None:
                raise ValueError(f"input.image is required for {job.task.value}")
            image = job.image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            arguments |= {"image": image, "strength": spec.strength}
        if job.task is Task.INPAINT:
            if job.mask is None:
                raise ValueError("input.mask is required for inpaint")
            mask = job.mask.convert("L").resize((spec.width, spec.height), Image.Resampling.NEAREST)
            arguments |= {"mask_image": mask, "width": spec.width, "height": spec.height}
        with torch.inference_mode():
            return list(self._for_run(job.task)(**arguments).images)


class LoraPipeline:
    """A LoRA attached to its base pipeline: runs draw on the base with the adapter active."""

    tasks = LORA_TASKS

    def __init__(self, base: DiffusersPipeline, adapter: str) -> None:
        self.base, self.adapter = base, adapter

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        return self.base.draw(self.adapter, job, on_step)
