"""What a GenerationJob asks a worker to compute: the task, and its typed input.

These bounds are the single source of truth for both the CRD schema (the API server
refuses out-of-range input) and the worker (which re-checks what it is sent).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

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
MAX_IMAGE_SIDE = 4096  # workers refuse larger input images (fetch.py), so no coordinate lies beyond
MAX_POINTS = 64
MAX_BOXES = 16
MAX_EXTRA_IMAGES = 7
MAX_NEW_TOKENS = 2048
DEFAULT_MAX_NEW_TOKENS = 64
MAX_RESULT_TEXT_CHARS = 16384  # status.result.text; the full text is always in the text artifact
# status.progress.text: the end of the text generated so far, small enough to rewrite with
# every progress write and to carry in every token's progress event.
MAX_PROGRESS_TEXT_CHARS = 512


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

# Tasks that draw what a prompt says.
TASKS_NEEDING_PROMPT = frozenset({Task.TEXT_TO_IMAGE, Task.INPAINT})


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


SEGMENT_PROMPT_RULE = "segment needs at least one point or box"
SEGMENT_POINTS_WITH_BOXES_RULE = (
    "segment.points can be given with at most one box (they refine that box's object)"
)
BOX_ORDER_RULE = "a box's x0 must be below x1 and y0 below y1"
Coordinate = Annotated[float, Field(ge=0, le=MAX_IMAGE_SIDE)]


class PointLabel(StrEnum):
    FOREGROUND = "foreground"
    BACKGROUND = "background"


class SegmentPoint(CamelModel):
    """A point prompt in input-image pixels: on the object (foreground) or off it (background)."""

    x: Coordinate
    y: Coordinate
    label: PointLabel = PointLabel.FOREGROUND


class SegmentBox(CamelModel):
    """A box prompt in input-image pixels: one object per box."""

    model_config = ConfigDict(
        json_schema_extra=validations(rule("self.x0 < self.x1 && self.y0 < self.y1", BOX_ORDER_RULE))
    )

    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate

    @model_validator(mode="after")
    def _ordered(self) -> SegmentBox:
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ValueError(f"{BOX_ORDER_RULE}; got ({self.x0}, {self.y0}, {self.x1}, {self.y1})")
        return self


class SegmentInput(CamelModel):
    """Prompts for a segment job. Boxes give one object each; points without a box give one
    object; points with one box refine that box's object."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "(has(self.points) && size(self.points) > 0) || (has(self.boxes) && size(self.boxes) > 0)",
                SEGMENT_PROMPT_RULE,
                reason="FieldValueRequired",
            ),
            rule(
                "!has(self.points) || size(self.points) == 0 || !has(self.boxes) || size(self.boxes) <= 1",
                SEGMENT_POINTS_WITH_BOXES_RULE,
                field_path=".boxes",
            ),
        )
    )

    points: list[SegmentPoint] = Field(default_factory=list, max_length=MAX_POINTS)
    boxes: list[SegmentBox] = Field(default_factory=list, max_length=MAX_BOXES)
    multimask: bool = Field(
        default=False, description="Three candidate masks per object (whole, part, subpart) instead of one."
    )

    @model_validator(mode="after")
    def _prompts(self) -> SegmentInput:
        if not self.points and not self.boxes:
            raise ValueError(SEGMENT_PROMPT_RULE)
        if self.points and len(self.boxes) > 1:
            raise ValueError(f"{SEGMENT_POINTS_WITH_BOXES_RULE}; got {len(self.boxes)} boxes")
        return self

    @property
    def objects(self) -> int:
        return max(1, len(self.boxes))


class ColorMode(StrEnum):
    COLOR = "color"
    BINARY = "binary"


class Hierarchy(StrEnum):
    STACKED = "stacked"  # shapes stacked on one another
    CUTOUT = "cutout"  # shapes cut out of one another, never overlapping


class TraceMode(StrEnum):
    SPLINE = "spline"
    POLYGON = "polygon"
    PIXEL = "pixel"


LENGTH_THRESHOLD_RULE = "vectorize.lengthThreshold must be at least 3.5"
TOP_P_RULE = "caption.topP must be at least 0.01"


class VectorizeInput(CamelModel):
    """How a vectorize job traces its image into SVG (vtracer's options, with its defaults)."""

    # The API server checks an integer against a fractional minimum as an integer (3 passes
    # minimum 3.5), so these bounds are CEL rules too.
    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("self.lengthThreshold >= 3.5", LENGTH_THRESHOLD_RULE, field_path=".lengthThreshold")
        )
    )

    color_mode: ColorMode = ColorMode.COLOR
    hierarchy: Hierarchy = Hierarchy.STACKED
    mode: TraceMode = TraceMode.SPLINE
    filter_speckle: int = Field(default=4, ge=0, le=128, description="Drop patches smaller than this.")
    color_precision: int = Field(default=6, ge=1, le=8, description="Significant bits per colour channel.")
    layer_difference: int = Field(default=16, ge=0, le=255, description="Colour difference between layers.")
    corner_threshold: int = Field(default=60, ge=0, le=180, description="Smallest corner angle (degrees).")
    length_threshold: float = Field(default=4.0, ge=3.5, le=10.0, description="Shortest segment length.")
    splice_threshold: int = Field(default=45, ge=0, le=180, description="Smallest angle splitting a spline.")
    path_precision: int = Field(default=8, ge=0, le=16, description="Decimal places in path coordinates.")


class CaptionInput(CamelModel):
    """Generation settings of a caption / visual question answering job; the question is
    input.prompt (empty: describe the image)."""

    model_config = ConfigDict(
        json_schema_extra=validations(rule("self.topP >= 0.01", TOP_P_RULE, field_path=".topP"))
    )

    extra_images: list[ImageRef] = Field(
        default_factory=list, max_length=MAX_EXTRA_IMAGES, description="More images after input.image."
    )
    max_new_tokens: int = Field(
        default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS, description="Most tokens to generate."
    )
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="0 decodes greedily; above 0 samples with the seed."
    )
    top_p: float = Field(default=1.0, ge=0.01, le=1.0, description="Nucleus sampling mass when sampling.")


class LrScheduler(StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"
    LINEAR = "linear"


class MixedPrecision(StrEnum):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


MAX_TRAIN_STEPS = 1_000_000
MAX_EPOCHS = 10_000
MAX_LORA_RANK = 256
MAX_SAMPLE_PROMPTS = 8
MAX_TARGET_MODULES = 32
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048
MAX_LEARNING_RATE = 1.0
DATASET_SOURCE_RULE = "training.dataset: exactly one of prefix or manifest must be set"
TRAINING_LENGTH_RULE = "training: exactly one of maxSteps or epochs must be set"
LEARNING_RATE_RULE = f"training.learningRate must be greater than 0 and at most {MAX_LEARNING_RATE}"
SAMPLE_EVERY_RULE = "training.sampleEverySteps needs training.samplePrompts"
S3_OBJECT_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+"
S3_PREFIX_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(.*/)?$"
MODULE_NAME_PATTERN = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"


class TrainingDataset(CamelModel):
    """Training images and their captions in the pool's object store. Exactly one of:
    ``prefix``, where each image (.png, .jpg, .jpeg, .webp) has a same-named .txt caption
    beside it; or ``manifest``, a JSON Lines object of ``{"image": "s3://...", "caption": "..."}``."""

    model_config = ConfigDict(
        json_schema_extra=validations(rule("has(self.prefix) != has(self.manifest)", DATASET_SOURCE_RULE))
    )

    prefix: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        pattern=S3_PREFIX_PATTERN,
        description="s3://bucket/folder/ holding image files and same-named .txt captions.",
    )
    manifest: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        pattern=S3_OBJECT_PATTERN,
        description='s3://bucket/key of JSON Lines: {"image": "s3://...", "caption": "..."} a line.',
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TrainingDataset:
        if (self.prefix is None) == (self.manifest is None):
            raise ValueError(DATASET_SOURCE_RULE)
        return self


ModuleName = Annotated[str, Field(max_length=128, pattern=MODULE_NAME_PATTERN)]
SamplePrompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]


class TrainingInput(CamelModel):
    """A LoRA fine-tuning run on the job's model (spec.model, a diffusers pipeline the pool
    serves). The seed is input.seed; samples use input.steps and input.guidanceScale."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("has(self.maxSteps) != has(self.epochs)", TRAINING_LENGTH_RULE),
            rule(
                f"self.learningRate > 0.0 && self.learningRate <= {MAX_LEARNING_RATE}",
                LEARNING_RATE_RULE,
                field_path=".learningRate",
            ),
            rule(
                "!has(self.sampleEverySteps) || (has(self.samplePrompts) && size(self.samplePrompts) > 0)",
                SAMPLE_EVERY_RULE,
                field_path=".sampleEverySteps",
            ),
        )
    )

    dataset: TrainingDataset
    rank: int = Field(default=8, ge=1, le=MAX_LORA_RANK, description="LoRA rank.")
    alpha: int | None = Field(
        default=None, ge=1, le=4 * MAX_LORA_RANK, description="LoRA alpha (scale alpha/rank); default: rank."
    )
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        max_length=MAX_TARGET_MODULES,
        description="UNet modules that get LoRA adapters (the attention projections by default).",
    )
    train_text_encoder: bool = Field(
        default=False, description="Also put LoRA adapters on the text encoder's attention projections."
    )
    learning_rate: float = Field(
        default=1e-4, ge=0.0, le=MAX_LEARNING_RATE, description="Peak learning rate (above 0)."
    )
    scheduler: LrScheduler = Field(default=LrScheduler.CONSTANT, description="Learning rate after warmup.")
    warmup_steps: int = Field(default=0, ge=0, le=MAX_TRAIN_STEPS, description="Linear warmup steps.")
    batch_size: int = Field(default=1, ge=1, le=64, description="Images per micro-batch.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=128, description="Micro-batches per optimizer step."
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=MAX_TRAIN_STEPS, description="Optimizer steps to train (or give epochs)."
    )
    epochs: int | None = Field(
        default=None, ge=1, le=MAX_EPOCHS, description="Passes over the dataset (or give maxSteps)."
    )
    resolution: int = Field(
        default=512,
        ge=MIN_RESOLUTION,
        le=MAX_RESOLUTION,
        multiple_of=SIDE_MULTIPLE,
        description="Images are resized and centre-cropped to this square side.",
    )
    mixed_precision: MixedPrecision = Field(
        default=MixedPrecision.NO,
        description="Frozen weights in fp16 or bf16 (GPU only); LoRA weights stay fp32.",
    )
    checkpoint_every_steps: int = Field(
        default=500,
        ge=1,
        le=MAX_TRAIN_STEPS,
        description="Write a resumable checkpoint to <output>/checkpoints/step-<n>/ every this many steps.",
    )
    sample_prompts: list[SamplePrompt] = Field(
        default_factory=list, max_length=MAX_SAMPLE_PROMPTS, description="Prompts drawn as training goes."
    )
    sample_every_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRAIN_STEPS,
        description="Draw sample-<step>-<i>.png for each sample prompt every this many steps.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainingInput:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError(TRAINING_LENGTH_RULE)
        if not 0 < self.learning_rate <= MAX_LEARNING_RATE:
            raise ValueError(f"{LEARNING_RATE_RULE}; got {self.learning_rate}")
        if self.sample_every_steps is not None and not self.sample_prompts:
            raise ValueError(SAMPLE_EVERY_RULE)
        return self

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else self.rank


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
    segment: SegmentInput | None = Field(default=None, description="segment: point and box prompts.")
    vectorize: VectorizeInput | None = Field(default=None, description="vectorize: tracing options.")
    caption: CaptionInput | None = Field(default=None, description="caption: generation settings.")
    training: TrainingInput | None = Field(default=None, description="train: the LoRA training run.")

    @model_validator(mode="after")
    def _pixel_budget(self) -> JobInput:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(f"{PIXEL_BUDGET_RULE}; {self.width}x{self.height} is {self.width * self.height}")
        return self


# Task-specific input sections and the task each belongs to.
TASK_SECTIONS = {
    "segment": Task.SEGMENT,
    "vectorize": Task.VECTORIZE,
    "caption": Task.CAPTION,
    "training": Task.TRAIN,
}


def section_rule(section: str) -> str:
    return f"input.{section} is only for task {TASK_SECTIONS[section].value}"


SEGMENT_REQUIRED_RULE = "input.segment is required for task segment"
TRAINING_REQUIRED_RULE = "input.training is required for task train"


def input_problems(task: Task, job_input: JobInput) -> list[str]:
    """Cross-field rules between a task and its input, as messages naming the field."""
    problems = []
    for section, owner in TASK_SECTIONS.items():
        if getattr(job_input, section) is not None and task is not owner:
            problems.append(section_rule(section))
    if task is Task.SEGMENT and job_input.segment is None:
        problems.append(SEGMENT_REQUIRED_RULE)
    if task is Task.TRAIN and job_input.training is None:
        problems.append(TRAINING_REQUIRED_RULE)
    if task in TASKS_NEEDING_IMAGE and job_input.image is None:
        problems.append(f"input.image is required for task {task.value}")
    if task is Task.INPAINT and job_input.mask is None:
        problems.append("input.mask is required for task inpaint")
    if task in TASKS_NEEDING_PROMPT and not job_input.prompt:
        problems.append(f"input.prompt is required for task {task.value}")
    return problems


# Named stages of the tasks that have no steps of their own; their progress counts stages.
SEGMENT_STAGES = ("prepare", "encode image", "decode masks", "write masks")
VECTORIZE_STAGES = ("prepare", "trace", "encode")


def progress_total(task: Task, job_input: JobInput) -> int:
    """Units of progress a run of ``task`` reports: denoising steps (image-to-image and
    inpaint skip the first 1-strength share), tokens generated at most, stages, or optimizer
    steps (train; 0 for a run given in epochs until its worker has counted the dataset)."""
    if task in (Task.IMAGE_TO_IMAGE, Task.INPAINT):
        return max(1, int(job_input.steps * job_input.strength))
    if task is Task.CAPTION:
        return job_input.caption.max_new_tokens if job_input.caption else DEFAULT_MAX_NEW_TOKENS
    if task is Task.SEGMENT:
        return len(SEGMENT_STAGES)
    if task is Task.VECTORIZE:
        return len(VECTORIZE_STAGES)
    if task is Task.TRAIN:
        training = job_input.training
        return training.max_steps or 0 if training else 0
    return job_input.steps
