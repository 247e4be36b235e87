"""Decisions about one GenerationJob: how much VRAM it needs, whether its pool can ever run
it, when to retry, when it has run out of time. Pure functions over plain values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from gpufleet.api.capabilities import model_tasks
from gpufleet.api.conditions import TERMINAL_PHASES, JobPhase, Reason
from gpufleet.api.inputs import MAX_PROMPT_CHARS, MIN_SIDE, Task
from gpufleet.api.models import GenerationJobSpec, WorkerPoolSpec
from gpufleet.api.quantity import parse_quantity

GIB = 2**30
MIB = 2**20
# Working memory of a run beyond the resident weights, per task (docs/api.md, "VRAM
# estimates", gives the figures behind each number).
# Diffusion: a fixed part for the sampler's buffers plus activations that grow with the
# pixels generated at once.
BASE_WORKING_BYTES = 256 * MIB
BYTES_PER_PIXEL = 2048
# SAM: the image encoder dominates, whatever the input size (every image is resized to 1024
# on its long side). ViT-H has 4096 tokens; a global-attention layer's map is 4096 x 4096 x
# 16 heads x 2 bytes = 512 MiB in fp16, next to 10 MiB per activation of width 1280 (40 MiB in
# the MLP). SAM 2's Hiera-L needs less: global attention only in its third stage (4096 tokens
# x 8 heads = 256 MiB), 8x8 windows over its first stage's 65536 tokens of width 144. Each
# object adds its mask logits (3 x 256x256 floats) and upscaled masks.
SEGMENT_BASE_BYTES = GIB
SEGMENT_BYTES_PER_OBJECT = 8 * MIB
# Vision-language generation: the KV cache. A 13B Llama (LLaVA-1.5-13B) keeps 2 x 40 layers x
# 5120 x 2 bytes = 800 KiB per token in fp16 (7B: 512 KiB); 1 MiB a token covers both. Each
# image is 576 tokens (LLaVA-1.5's 24x24 patches at 336 pixels); a prompt is taken at one
# token per 4 characters; plus 512 MiB of logits and activations.
CAPTION_BASE_BYTES = 512 * MIB
CAPTION_BYTES_PER_TOKEN = MIB
CAPTION_TOKENS_PER_IMAGE = 576
CHARS_PER_TOKEN = 4
# LoRA training: its own copy of the pipeline's weights (SD 1.5 is 2 GiB in fp16), the
# adapters' fp32 weights, gradients and AdamW moments, then the activations kept for the
# backward pass, about 24 KiB per training pixel without gradient checkpointing (SD 1.5 at
# 512x512, batch 1, fp16: about 6 GiB).
TRAIN_BASE_BYTES = 4 * GIB
TRAIN_BYTES_PER_PIXEL = 24 * 1024
# Vectorizing runs on the CPU: the run reserves a nominal amount so it still takes a job slot.
VECTORIZE_WORKING_BYTES = 16 * MIB


@dataclass(frozen=True)
class GpuClass:
    """A kind of GPU some node has (from its GPU Feature Discovery labels)."""

    product: str
    memory_bytes: int


@dataclass(frozen=True)
class Refusal:
    """Why a job cannot be queued now; the job stays Pending with this reason and message."""

    reason: Reason
    message: str


def working_vram(spec: GenerationJobSpec) -> int:
    """VRAM the job needs besides its model's weights: spec.vram, else an estimate from the
    task and input."""
    if spec.vram is not None:
        return parse_quantity(spec.vram).value()
    job_input = spec.input
    if spec.task is Task.SEGMENT:
        objects = job_input.segment.objects if job_input.segment else 1
        return SEGMENT_BASE_BYTES + objects * SEGMENT_BYTES_PER_OBJECT
    if spec.task is Task.CAPTION:
        caption = job_input.caption
        images = 1 + (len(caption.extra_images) if caption else 0)
        new_tokens = caption.max_new_tokens if caption else 64
        prompt_tokens = -(-min(len(job_input.prompt), MAX_PROMPT_CHARS) // CHARS_PER_TOKEN)
        tokens = images * CAPTION_TOKENS_PER_IMAGE + prompt_tokens + new_tokens
        return CAPTION_BASE_BYTES + tokens * CAPTION_BYTES_PER_TOKEN
    if spec.task is Task.VECTORIZE:
        return VECTORIZE_WORKING_BYTES
    if spec.task is Task.TRAIN and job_input.training is not None:
        training = job_input.training
        return TRAIN_BASE_BYTES + training.batch_size * training.resolution**2 * TRAIN_BYTES_PER_PIXEL
    pixels = job_input.width * job_input.height * job_input.num_images
    return BASE_WORKING_BYTES + pixels * BYTES_PER_PIXEL


def smallest_working_vram(task: Task) -> int:
    """The least working VRAM ``working_vram`` estimates for a job of ``task``: one smallest
    image, one object, one image to caption with no prompt or new tokens."""
    if task is Task.SEGMENT:
        return SEGMENT_BASE_BYTES + SEGMENT_BYTES_PER_OBJECT
    if task is Task.CAPTION:
        return CAPTION_BASE_BYTES + CAPTION_TOKENS_PER_IMAGE * CAPTION_BYTES_PER_TOKEN
    if task is Task.VECTORIZE:
        return VECTORIZE_WORKING_BYTES
    return BASE_WORKING_BYTES + MIN_SIDE * MIN_SIDE * BYTES_PER_PIXEL


def models_too_large(pool: WorkerPoolSpec, classes: list[GpuClass]) -> list[str]:
    """The pool's models whose weights plus the smallest job they serve fit on no GPU the pool
    can get (``classes``, see `pool_gpu_classes`), each with the numbers. Jobs for them are
    refused one by one (see `refusal`); this says so for the pool. Empty without classes:
    then no GPU matches at all, which the pool says on its own."""
    if not classes:
        return []
    largest = max(c.memory_bytes for c in classes)
    found = []
    for model in pool.models:
        served = model_tasks(pool.runtime, model)
        tasks = [t for t in pool.tasks if t in served]  # the pool's order settles ties
        if not tasks:
            continue
        task = min(tasks, key=smallest_working_vram)
        weights, working = parse_quantity(model.vram).value(), smallest_working_vram(task)
        if weights + working > largest:
            found.append(
                f"model {model.name} needs at least {gib(weights + working, up=True)} of VRAM per GPU "
                f"(weights {gib(weights, up=True)} + the smallest {task.value} job's working memory "
                f"{gib(working, up=True)}); the largest GPU the pool can get has {gib(largest)}"
            )
    return found


def gib(size: int, *, up: bool = False) -> str:
    """``size`` in GiB with two decimals, rounded down, or up: a need is never shown smaller
    than it is, nor a capacity larger, so a refusal never reads "needs 16.00Gi, has 16.00Gi"."""
    hundredths = -(-size * 100 // GIB) if up else size * 100 // GIB
    return f"{hundredths // 100}.{hundredths % 100:02d}Gi"


def pool_gpu_classes(pool: WorkerPoolSpec, cluster: list[GpuClass], min_memory: int) -> list[GpuClass]:
    """The GPU classes a pool's workers can land on."""
    allowed = set(pool.gpu.products)
    return [c for c in cluster if c.memory_bytes >= min_memory and (not allowed or c.product in allowed)]


def refusal(spec: GenerationJobSpec, pool: WorkerPoolSpec | None, classes: list[GpuClass]) -> Refusal | None:
    """Why the job cannot join its pool's queue, or None when it can.

    ``classes`` are the GPU classes the pool can get (see `pool_gpu_classes`).
    """
    if pool is None:
        return Refusal(
            Reason.POOL_NOT_FOUND, f"WorkerPool {spec.pool_ref.name!r} does not exist in this namespace"
        )
    models = {m.name: m for m in pool.models}
    if spec.model not in models:
        return Refusal(
            Reason.MODEL_NOT_SERVED,
            f"pool {spec.pool_ref.name!r} serves {sorted(models)}, not {spec.model!r}",
        )
    if spec.task not in pool.tasks:
        return Refusal(
            Reason.TASK_NOT_SERVED,
            f"pool {spec.pool_ref.name!r} accepts tasks {[t.value for t in pool.tasks]}, "
            f"not {spec.task.value!r}",
        )
    can_do = model_tasks(pool.runtime, models[spec.model])
    if spec.task not in can_do:
        return Refusal(
            Reason.TASK_NOT_SERVED,
            f"model {spec.model!r} of pool {spec.pool_ref.name!r} (runtime {pool.runtime.value}) "
            f"cannot do {spec.task.value!r}; it does {sorted(t.value for t in can_do)}",
        )
    needed = parse_quantity(models[spec.model].vram).value() + working_vram(spec)
    largest = max((c.memory_bytes for c in classes), default=0)
    if needed > largest:
        where = (
            f"the largest GPU the pool can get has {gib(largest)}"
            if classes
            else "no node has a GPU that matches the pool's spec.gpu"
        )
        return Refusal(
            Reason.UNSCHEDULABLE,
            f"the job needs {gib(needed, up=True)} of VRAM per GPU (model {spec.model} "
            f"{gib(needed - working_vram(spec), up=True)} + working memory "
            f"{gib(working_vram(spec), up=True)}); {where}",
        )
    return None


MAX_BACKOFF_SECONDS = 3600.0  # doubling stops here, so 100 attempts still end in hours, not years


def retry_delay(attempts: int, max_attempts: int, backoff_seconds: int) -> float | None:
    """Seconds to wait before the next attempt after ``attempts`` failed ones; None when exhausted.

    The wait doubles with each attempt, up to an hour.
    """
    if attempts >= max_attempts:
        return None
    return min(MAX_BACKOFF_SECONDS, float(backoff_seconds * 2 ** min(max(0, attempts - 1), 32)))


def deadline(start_time: datetime | None, timeout_seconds: int) -> datetime | None:
    """When a job started at ``start_time`` runs out of time; None while it never started."""
    return None if start_time is None else start_time + timedelta(seconds=timeout_seconds)


def deadline_message(timeout_seconds: int) -> str:
    return f"ran longer than spec.timeoutSeconds ({timeout_seconds}s)"


def past_deadline(start_time: datetime | None, timeout_seconds: int, now: datetime) -> bool:
    ends = deadline(start_time, timeout_seconds)
    return ends is not None and now >= ends


def ttl_expired(completion_time: datetime | None, ttl_seconds: int | None, now: datetime) -> bool:
    return (
        completion_time is not None
        and ttl_seconds is not None
        and now >= completion_time + timedelta(seconds=ttl_seconds)
    )


class Step(StrEnum):
    """What a pool round does with one job (see `next_step`)."""

    NOTHING = "Nothing"
    FORGET = "Forget"  # being deleted (another finalizer holds it): stop its run, forget it
    EXPIRE = "Expire"  # finished and past ttlSecondsAfterFinished: delete it
    CANCEL_RUN = "CancelRun"  # spec.cancel while it runs: ask its worker to stop
    CANCEL = "Cancel"  # spec.cancel before it ran: Cancelled now
    FOLLOW = "Follow"  # dispatched or running: make sure its attempt is followed
    REFUSE = "Refuse"  # its pool can never run it as it is: Pending with the reason
    TIME_OUT = "TimeOut"  # waiting for a retry past its deadline: Failed
    QUEUE = "Queue"  # waits for a GPU


@dataclass(frozen=True)
class JobView:
    """What the round's per-job decision reads of a job."""

    phase: JobPhase | None
    deleting: bool
    cancel: bool
    cancel_sent: bool
    attempts: int
    start_time: datetime | None
    completion_time: datetime | None
    timeout_seconds: int
    ttl_seconds: int | None


def next_step(job: JobView, refused: Refusal | None, now: datetime) -> Step:
    """The round's decision for one job; ``refused`` is `refusal` of the job against its pool."""
    running = job.phase in (JobPhase.DISPATCHED, JobPhase.RUNNING)
    if job.deleting:
        return Step.FORGET
    if job.phase in TERMINAL_PHASES:
        if ttl_expired(job.completion_time, job.ttl_seconds, now):
            return Step.EXPIRE
        return Step.NOTHING
    if job.cancel:
        if running:
            return Step.NOTHING if job.cancel_sent else Step.CANCEL_RUN
        return Step.CANCEL
    if running:
        return Step.FOLLOW
    if refused is not None:
        return Step.REFUSE
    if job.attempts and past_deadline(job.start_time, job.timeout_seconds, now):
        return Step.TIME_OUT
    return Step.QUEUE


FOREVER = datetime.max.replace(tzinfo=UTC)


def quiet_until(job: JobView) -> datetime | None:
    """Until when `next_step` says NOTHING for ``job`` as it is, whatever the clock and its
    pool (FOREVER included); None when it may say more. A round need not decide such a job
    again until then, or until it changes: the finished jobs of a pool that keeps them."""
    if job.deleting or job.phase not in TERMINAL_PHASES:
        return None
    if job.ttl_seconds is None or job.completion_time is None:
        return FOREVER
    return job.completion_time + timedelta(seconds=job.ttl_seconds)


@dataclass(frozen=True)
class WorkerRun:
    """A run that a worker's inventory lists as not ended."""

    worker: str
    run_id: str
    job: str  # "namespace/name"
    attempt: int
    job_uid: str | None = None  # None from a worker that does not say


def stray_runs(runs: Iterable[WorkerRun], live_attempts: Mapping[str, tuple[int, str]]) -> list[WorkerRun]:
    """The runs no job wants: a job wants only its current attempt, and only while it is
    Dispatched or Running (``live_attempts``: job -> that attempt and the job's uid). The others
    belong to a deleted job (or an earlier one of the same name), or to an attempt its job has
    moved past (lost, timed out, given no answer, ended): their workers should stop them, so
    they neither hold a GPU nor write artifacts."""
    return [run for run in runs if not wanted(run, live_attempts.get(run.job))]


def wanted(run: WorkerRun, live: tuple[int, str] | None) -> bool:
    return live is not None and live[0] == run.attempt and run.job_uid in (None, live[1])
