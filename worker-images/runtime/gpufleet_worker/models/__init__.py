"""Models a worker serves, one pipeline class per kind: the built-in smoke-test model and
vectorizer, diffusers pipelines (and LoRA training on them), SAM mask generation and
vision-language generation."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from gpufleet.api.inputs import JobInput, Task, progress_total
from gpufleet.api.servedmodels import BUILTIN_SCHEME, FILE_SCHEME

from ..artifacts import ArtifactStore
from ..config import ModelSpec
from ..protocol import Artifact, ProgressUnit, TrainingProgress

PNG = "image/png"
SVG = "image/svg+xml"
JSON = "application/json"
TEXT = "text/plain"
SAFETENSORS = "application/vnd.safetensors"

# transformers model types served as mask generators (segment); other config.json
# directories are vision-language models (caption). SAM 2 comes as Sam2Model's own type and
# as the video model's, which SAM 2.1's published directories have.
SAM2_TYPES = frozenset({"sam2", "sam2_video"})
MASK_GENERATION_TYPES = frozenset({"sam"}) | SAM2_TYPES


class StepHook(Protocol):
    """Called after every unit of work (denoising step, generated token, stage) with the
    units done and the total; ``stage`` names the stage where a task has stages, ``text`` is
    the text generated so far where a task generates text (the hook keeps its end). It
    raises Cancelled to stop the run there."""

    def __call__(
        self,
        step: int,
        total: int,
        stage: str | None = None,
        training: TrainingProgress | None = None,
        text: str | None = None,
    ) -> None: ...


class Cancelled(Exception):
    """Raised from a step hook to stop a run between steps."""


class TrainingDiverged(Exception):
    """A training loss became NaN or infinite: more steps cannot recover it."""


@dataclass(frozen=True)
class Workspace:
    """Where a long run (train) writes as it goes: checkpoints and samples under the job's
    output prefix, the same for every attempt of a job."""

    output_uri: str
    store: ArtifactStore


@dataclass(frozen=True)
class Generation:
    """One run's work, with its input images already fetched and decoded."""

    task: Task
    input: JobInput
    seed: int
    image: Image.Image | None = None
    mask: Image.Image | None = None
    extra_images: tuple[Image.Image, ...] = ()
    workspace: Workspace | None = None


@dataclass(frozen=True)
class OutputFile:
    """One artifact before it is written. ``size`` is the (width, height) an image or SVG
    must have; the engine checks it, and that the bytes parse, before recording it."""

    name: str
    data: bytes
    media_type: str
    size: tuple[int, int] | None = None


@dataclass
class Outputs:
    files: list[OutputFile] = field(default_factory=list)
    text: str | None = None  # the answer of a text task, also among files as text/plain
    summary: str = ""  # what was made, for the run's message ("2 images", "3 masks")
    written: list[Artifact] = field(default_factory=list)  # artifacts the run wrote as it went


class Pipeline(Protocol):
    tasks: frozenset[Task]

    def run(self, job: Generation, on_step: StepHook) -> Outputs: ...


@runtime_checkable
class AdapterHost(Protocol):
    """A pipeline LoRAs attach to as adapters (a diffusers pipeline)."""

    def attach_lora(self, lora: ModelSpec) -> Pipeline:
        """Attaches ``lora`` (its files local: a file:// source) as the adapter of its name."""
        ...

    def detach_lora(self, name: str) -> None: ...


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with no timestamp or other varying metadata: same pixels, same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImagePipeline:
    """A pipeline whose ``generate`` makes images: they become image-<i>.png artifacts."""

    def generate(self, job: Generation, on_step: StepHook) -> list[Image.Image]:
        raise NotImplementedError

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        images = self.generate(job, on_step)
        size = (job.input.width, job.input.height)
        files = [OutputFile(f"image-{i}.png", encode_png(image), PNG, size) for i, image in enumerate(images)]
        return Outputs(files=files, summary=plural(len(images), "image"))


def total_steps(job: Generation) -> int:
    return progress_total(job.task, job.input)


def progress_unit(task: Task) -> ProgressUnit:
    if task is Task.CAPTION:
        return "tokens"
    if task in (Task.SEGMENT, Task.VECTORIZE):
        return "stages"
    return "steps"


def model_kind(directory: Path) -> str:
    """What a saved model directory holds: "diffusers", "mask-generation" or "vision-language"."""
    if (directory / "model_index.json").is_file():
        return "diffusers"
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(
            f"{directory} holds no saved model (no model_index.json for diffusers, no config.json "
            "for transformers)"
        )
    model_type = json.loads(config.read_text()).get("model_type")
    return "mask-generation" if model_type in MASK_GENERATION_TYPES else "vision-language"


def load_pipeline(spec: ModelSpec, device: str) -> Pipeline:
    """Loads ``spec`` onto ``device`` ("cpu" or "cuda:N")."""
    if spec.source.startswith(BUILTIN_SCHEME):
        from .builtin import BUILTIN_MODELS

        name = spec.source[len(BUILTIN_SCHEME) :]
        if name not in BUILTIN_MODELS:
            raise ValueError(
                f"models[{spec.name}].source: no built-in model {name!r}; "
                f"built-in: {', '.join(sorted(BUILTIN_MODELS))}"
            )
        return BUILTIN_MODELS[name](device)
    if spec.source.startswith(FILE_SCHEME):
        directory = spec.source[len(FILE_SCHEME) :]
        kind = model_kind(Path(directory))
        if kind == "diffusers":
            from .diffusers_pipeline import DiffusersPipeline

            return DiffusersPipeline(directory, device)
        if kind == "mask-generation":
            from .segment import MaskGenerationPipeline

            return MaskGenerationPipeline(directory, device)
        from .vision_language import VisionLanguagePipeline

        return VisionLanguagePipeline(directory, device)
    raise ValueError(f"models[{spec.name}].source: unsupported scheme in {spec.source!r}")
