"""What a GenerationJob asks a worker to compute: the task, and its typed input.

These bounds are the single source of truth for both the CRD schema (the API server
refuses out-of-range input) and the worker (which re-checks what it is sent).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from gpufleet.api.cel import rule, validations

MAX_PROMPT_CHARS = 4000
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8
MAX_PIXELS = 2048 * 1024  # per image: 2048x2048 is refused; keeps activations within one GPU
MAX_STEPS = 250
MAX_GUIDANCE = 50.0
MAX_SEED = 2**32 - 1
MAX_IMAGES = 16
MAX_URL_CHARS = 2048


class Task(StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    INPAINT = "inpaint"
    SEGMENT = "segment"
    VECTORIZE = "vectorize"
    CAPTION = "caption"
    TRAIN = "train"
    WORKFLOW = "workflow"


# Tasks that cannot run without an input image (inpaint also needs a mask).
TASKS_NEEDING_IMAGE = frozenset(
    {Task.IMAGE_TO_IMAGE, Task.INPAINT, Task.SEGMENT, Task.VECTORIZE, Task.CAPTION}
)


class CamelModel(BaseModel):
    """Field names in camelCase on the wire, snake_case in Python; unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False)


IMAGE_REF_RULE = "exactly one of url or object must be set"
PIXEL_BUDGET_RULE = f"width*height must be at most {MAX_PIXELS} pixels"


class ImageRef(CamelModel):
    """An input image: an http(s) URL, or an object in S3-compatible storage. Exactly one."""

    model_config = ConfigDict(
        json_schema_extra=validations(rule("has(self.url) != has(self.object)", IMAGE_REF_RULE))
    )

    url: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        pattern=r"^https?://",
        description="http(s) URL of the image. Private and loopback addresses are refused by workers.",
    )
    object: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+",
        description="s3://bucket/key of the image in the pool's object store.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        if (self.url is None) == (self.object is None):
            raise ValueError(IMAGE_REF_RULE)
        return self


class JobInput(CamelModel):
    """Typed input of a generation job."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(f"self.width * self.height <= {MAX_PIXELS}", PIXEL_BUDGET_RULE, field_path=".width")
        )
    )

    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS, description="What to generate.")
    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="What to steer away from."
    )
    width: int = Field(
        default=512,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=SIDE_MULTIPLE,
        description=f"Output width in pixels, a multiple of {SIDE_MULTIPLE}.",
    )
    height: int = Field(
        default=512,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=SIDE_MULTIPLE,
        description=f"Output height in pixels, a multiple of {SIDE_MULTIPLE}.",
    )
    steps: int = Field(default=30, ge=1, le=MAX_STEPS, description="Denoising steps.")
    guidance_scale: float = Field(
        default=7.5, ge=0.0, le=MAX_GUIDANCE, description="Classifier-free guidance scale."
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Random seed; the same seed gives the same output."
    )
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES, description="Images to generate.")
    strength: float = Field(
        default=0.8, ge=0.0, le=1.0, description="image-to-image / inpaint: how far to move from the input."
    )
    image: ImageRef | None = Field(default=None, description="Input image (image-to-image, inpaint, ...).")
    mask: ImageRef | None = Field(default=None, description="Inpaint mask: white is repainted.")

    @model_validator(mode="after")
    def _pixel_budget(self) -> JobInput:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(f"{PIXEL_BUDGET_RULE}; {self.width}x{self.height} is {self.width * self.height}")
        return self


def input_problems(task: Task, job_input: JobInput) -> list[str]:
    """Cross-field rules between a task and its input, as messages naming the field."""
    problems = []
    if task in TASKS_NEEDING_IMAGE and job_input.image is None:
        problems.append(f"input.image is required for task {task.value}")
    if task is Task.INPAINT and job_input.mask is None:
        problems.append("input.mask is required for task inpaint")
    if task is Task.TEXT_TO_IMAGE and not job_input.prompt:
        problems.append("input.prompt is required for task text-to-image")
    return problems
