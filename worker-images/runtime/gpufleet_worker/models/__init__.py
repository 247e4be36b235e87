"""Models a worker serves: the built-in smoke-test model and diffusers pipelines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from gpufleet.api.inputs import JobInput, Task
from gpufleet.api.servedmodels import BUILTIN_SCHEME, FILE_SCHEME

from ..config import ModelSpec

# Called after every denoising step with (steps done, total steps). It raises Cancelled to
# stop the run between steps.
StepHook = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised from a step hook to stop a run between steps."""


@dataclass(frozen=True)
class Generation:
    """One run's work, with its input images already fetched and decoded."""

    task: Task
    input: JobInput
    seed: int
    image: Image.Image | None = None
    mask: Image.Image | None = None


class Pipeline(Protocol):
    tasks: frozenset[Task]

    def generate(self, job: Generation, on_step: StepHook) -> list[Image.Image]: ...


def total_steps(job: Generation) -> int:
    """Denoising steps a run takes: image-to-image and inpaint skip the first (1-strength)."""
    if job.task in (Task.IMAGE_TO_IMAGE, Task.INPAINT):
        return max(1, int(job.input.steps * job.input.strength))
    return job.input.steps


def load_pipeline(spec: ModelSpec, device: str) -> Pipeline:
    """Loads ``spec`` onto ``device`` ("cpu" or "cuda:N")."""
    if spec.source.startswith(BUILTIN_SCHEME):
        from .tinysd import BUILTIN_MODELS

        name = spec.source[len(BUILTIN_SCHEME) :]
        if name not in BUILTIN_MODELS:
            raise ValueError(
                f"models[{spec.name}].source: no built-in model {name!r}; "
                f"built-in: {', '.join(sorted(BUILTIN_MODELS))}"
            )
        return BUILTIN_MODELS[name](device)
    if spec.source.startswith(FILE_SCHEME):
        from .diffusers_pipeline import DiffusersPipeline

        return DiffusersPipeline(spec.source[len(FILE_SCHEME) :], device)
    raise ValueError(f"models[{spec.name}].source: unsupported scheme in {spec.source!r}")
