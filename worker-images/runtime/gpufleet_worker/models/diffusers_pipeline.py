"""Diffusers pipelines loaded from a local model directory (the ``diffusers`` extra).

Nothing is downloaded: the directory must hold a pipeline saved with ``save_pretrained``
(model_index.json and its components). Text-to-image runs the pipeline itself;
image-to-image and inpaint run the matching pipelines over the same loaded weights; train
fits a LoRA on fresh copies of the directory's weights (train_lora.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gpufleet.api.inputs import Task

from . import Generation, ImagePipeline, Outputs, StepHook, total_steps

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


class DiffusersPipeline(ImagePipeline):
    tasks = frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT, Task.TRAIN})

    def __init__(self, directory: str, device: str, lora: Path | None = None) -> None:
        """``lora``: trained LoRA weights (a .safetensors file, or a folder holding
        pytorch_lora_weights.safetensors) attached to the pipeline; such a model does not train."""
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
        if lora is not None:
            folder, weights = (lora.parent, lora.name) if lora.is_file() else (lora, LORA_WEIGHTS)
            if not (folder / weights).is_file():
                raise FileNotFoundError(f"{lora} holds no LoRA weights ({LORA_WEIGHTS})")
            self.pipeline.load_lora_weights(str(folder), weight_name=weights, local_files_only=True)
            self.tasks = DiffusersPipeline.tasks - {Task.TRAIN}

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        if job.task is Task.TRAIN:
            from .train_lora import train_lora

            return train_lora(self.directory, self.device, job, on_step)
        return super().run(job, on_step)

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
