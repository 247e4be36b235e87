"""Decisions about one job (gpufleet.core.jobs): VRAM, refusals with numbers, retries, deadline, TTL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.api import testing
from gpufleet.api.capabilities import model_tasks
from gpufleet.api.conditions import JobPhase, Reason
from gpufleet.api.inputs import SegmentInput, Task
from gpufleet.api.models import GenerationJobSpec, WorkerPoolSpec
from gpufleet.api.quantity import parse_quantity
from gpufleet.core import jobs
from gpufleet.core.jobs import (
    MAX_BACKOFF_SECONDS,
    GpuClass,
    gib,
    pool_gpu_classes,
    refusal,
    retry_delay,
    working_vram,
)

GiB = 2**30
MiB = 2**20
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
A100 = GpuClass("NVIDIA-A100-SXM4-80GB", 80 * GiB)
L4 = GpuClass("NVIDIA-L4", 24 * GiB)
T4 = GpuClass("Tesla-T4", 16 * GiB)
CLUSTER = [T4, L4, A100]
DIFFUSION_TASKS = {Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())["spec"]


def pool_spec(**changes: Any) -> WorkerPoolSpec:
    spec = example("workerpool.yaml")
    spec.update(changes)
    return WorkerPoolSpec.model_validate(spec)


def job_spec(**changes: Any) -> GenerationJobSpec:
    spec = example("text-to-image.yaml")
    spec.update(changes)
    return GenerationJobSpec.model_validate(spec)


def shown_gib(message: str, after: str) -> float:
    """The first ``N.NNGi`` in ``message`` after the text ``after``."""
    match = re.search(re.escape(after) + r".*?(\d+\.\d\d)Gi", message)
    assert match, f"no number after {after!r} in {message!r}"
    return float(match.group(1))


# --- working VRAM -----------------------------------------------------------------------------


def test_working_vram_is_spec_vram_when_given() -> None:
    assert working_vram(job_spec(vram="3Gi")) == 3 * GiB
    assert working_vram(job_spec(vram="1500Mi")) == 1500 * MiB


def test_working_vram_estimate_from_the_input() -> None:
    spec = job_spec(vram=None)
    pixels = 512 * 512 * 2  # the example asks for two 512x512 images
    assert working_vram(spec) == jobs.BASE_WORKING_BYTES + pixels * jobs.BYTES_PER_PIXEL


@settings(max_examples=100, deadline=None)
@given(spec=testing.job_specs())
def test_the_estimate_grows_with_the_pixels_generated_at_once(spec: GenerationJobSpec) -> None:
    if spec.task not in DIFFUSION_TASKS:
        spec = spec.model_copy(update={"task": Task.TEXT_TO_IMAGE})
    estimate = working_vram(spec.model_copy(update={"vram": None}))
    assert estimate > jobs.BASE_WORKING_BYTES
    bigger = spec.input.model_copy(update={"num_images": spec.input.num_images + 1})
    assert working_vram(spec.model_copy(update={"vram": None, "input": bigger})) > estimate
    if spec.vram is not None:
        assert working_vram(spec) == parse_quantity(spec.vram).value()


# --- the pool's GPU classes -------------------------------------------------------------------


def test_pool_gpu_classes_need_the_minimum_memory_and_an_allowed_product() -> None:
    assert pool_gpu_classes(pool_spec(), CLUSTER, 16 * GiB) == CLUSTER
    assert pool_gpu_classes(pool_spec(), CLUSTER, 16 * GiB + 1) == [L4, A100]
    only_l4 = pool_spec(gpu={"minMemory": "16Gi", "products": ["NVIDIA-L4"]})
    assert pool_gpu_classes(only_l4, CLUSTER, 16 * GiB) == [L4]
    assert pool_gpu_classes(only_l4, [T4, A100], 16 * GiB) == []
    assert pool_gpu_classes(pool_spec(), [], 1) == []


# --- refusals ---------------------------------------------------------------------------------


def test_a_job_that_fits_is_not_refused() -> None:
    assert refusal(job_spec(), pool_spec(), CLUSTER) is None


def test_missing_pool() -> None:
    refused = refusal(job_spec(), None, CLUSTER)
    assert refused is not None
    assert refused.reason is Reason.POOL_NOT_FOUND
    assert "'sd15'" in refused.message and "does not exist" in refused.message


def test_model_not_served_lists_what_is_served() -> None:
    refused = refusal(job_spec(model="sdxl"), pool_spec(), CLUSTER)
    assert refused is not None
    assert refused.reason is Reason.MODEL_NOT_SERVED
    assert "['tiny-sd']" in refused.message and "'sdxl'" in refused.message


def test_task_not_served_lists_what_is_accepted() -> None:
    refused = refusal(job_spec(), pool_spec(tasks=["image-to-image"]), CLUSTER)
    assert refused is not None
    assert refused.reason is Reason.TASK_NOT_SERVED
    assert "['image-to-image']" in refused.message and "'text-to-image'" in refused.message


def example_job(name: str) -> GenerationJobSpec:
    return GenerationJobSpec.model_validate(example(name))


def test_a_task_the_pools_model_cannot_do_is_refused_with_what_it_can_do() -> None:
    """tiny-sd cannot segment: the job is refused at admission, never sent to a worker."""
    pool = pool_spec(tasks=["text-to-image", "segment"])
    job = example_job("segment.yaml").model_copy(update={"model": "tiny-sd"})
    refused = refusal(job, pool, CLUSTER)
    assert refused is not None and refused.reason is Reason.TASK_NOT_SERVED
    assert refused.message == (
        "model 'tiny-sd' of pool 'studio' (runtime builtin) cannot do 'segment'; "
        "it does ['image-to-image', 'inpaint', 'text-to-image']"
    )


def test_declared_model_tasks_narrow_what_a_diffusers_model_does() -> None:
    studio_manifest = next(yaml.safe_load_all((EXAMPLES / "workerpool-studio.yaml").read_text()))
    studio = WorkerPoolSpec.model_validate(studio_manifest["spec"])
    assert refusal(example_job("segment.yaml"), studio, CLUSTER) is None
    assert refusal(example_job("caption.yaml"), studio, CLUSTER) is None
    assert refusal(example_job("inpaint.yaml"), studio, CLUSTER) is None
    wrong = example_job("caption.yaml").model_copy(update={"model": "sam-vit-b"})
    refused = refusal(wrong, studio, CLUSTER)
    assert refused is not None and refused.reason is Reason.TASK_NOT_SERVED
    assert "cannot do 'caption'; it does ['segment']" in refused.message


def test_a_builtin_model_does_what_its_name_does_whatever_it_declares() -> None:
    pool = pool_spec(
        models=[{"name": "vtracer", "source": "builtin://vtracer", "vram": "1Mi", "tasks": ["segment"]}],
        tasks=["vectorize", "segment"],
    )
    assert model_tasks(pool.runtime, pool.models[0]) == frozenset()
    tiny = pool_spec(models=[{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "2Gi"}])
    assert model_tasks(tiny.runtime, tiny.models[0]) == DIFFUSION_TASKS


def test_working_vram_per_task_follows_the_input() -> None:
    segment = example_job("segment.yaml")
    assert working_vram(segment) == jobs.SEGMENT_BASE_BYTES + jobs.SEGMENT_BYTES_PER_OBJECT
    three_boxes = SegmentInput.model_validate({"boxes": [{"x0": 0, "y0": 0, "x1": 5, "y1": 5}] * 3})
    boxes = segment.input.model_copy(update={"segment": three_boxes})
    assert working_vram(segment.model_copy(update={"input": boxes})) == (
        jobs.SEGMENT_BASE_BYTES + 3 * jobs.SEGMENT_BYTES_PER_OBJECT
    )
    caption = example_job("caption.yaml")
    prompt_tokens = -(-len(caption.input.prompt) // 4)
    assert working_vram(caption) == jobs.CAPTION_BASE_BYTES + (576 + prompt_tokens + 64) * MiB
    more = caption.input.model_copy(
        update={"caption": caption.input.caption.model_copy(update={"max_new_tokens": 1000})}  # type: ignore[union-attr]
    )
    assert working_vram(caption.model_copy(update={"input": more})) == working_vram(caption) + 936 * MiB
    assert working_vram(example_job("vectorize.yaml")) == jobs.VECTORIZE_WORKING_BYTES
    inpaint = example_job("inpaint.yaml")
    assert working_vram(inpaint) == jobs.BASE_WORKING_BYTES + 512 * 512 * jobs.BYTES_PER_PIXEL


def test_a_train_estimate_grows_with_batch_and_resolution() -> None:
    train = example_job("train-lora.yaml").model_copy(update={"vram": None})
    settings = train.input.training
    assert settings is not None and settings.batch_size == 2
    assert working_vram(train) == jobs.TRAIN_BASE_BYTES + 2 * 512 * 512 * jobs.TRAIN_BYTES_PER_PIXEL
    bigger = settings.model_copy(update={"batch_size": 4})
    bigger_input = train.input.model_copy(update={"training": bigger})
    assert working_vram(train.model_copy(update={"input": bigger_input})) == (
        jobs.TRAIN_BASE_BYTES + 4 * 512 * 512 * jobs.TRAIN_BYTES_PER_PIXEL
    )


def test_the_first_problem_is_reported_pool_then_model_then_task_then_vram() -> None:
    nothing_fits = job_spec(model="sdxl", vram="1Ti")
    pool = pool_spec(tasks=["image-to-image"])
    assert refusal(nothing_fits, None, []).reason is Reason.POOL_NOT_FOUND  # type: ignore[union-attr]
    assert refusal(nothing_fits, pool, []).reason is Reason.MODEL_NOT_SERVED  # type: ignore[union-attr]
    assert refusal(job_spec(vram="1Ti"), pool, []).reason is Reason.TASK_NOT_SERVED  # type: ignore[union-attr]


def test_more_vram_than_any_gpu_gives_both_numbers() -> None:
    refused = refusal(job_spec(vram="100Gi"), pool_spec(), CLUSTER)
    assert refused is not None
    assert refused.reason is Reason.UNSCHEDULABLE
    # The model's 2Gi plus the job's 100Gi, against the A100's 80Gi.
    assert "needs 102.00Gi" in refused.message
    assert "model tiny-sd 2.00Gi + working memory 100.00Gi" in refused.message
    assert "largest GPU the pool can get has 80.00Gi" in refused.message


def test_the_products_limit_which_gpus_count() -> None:
    only_l4 = pool_spec(gpu={"minMemory": "16Gi", "products": ["NVIDIA-L4"]})
    classes = pool_gpu_classes(only_l4, CLUSTER, 16 * GiB)
    refused = refusal(job_spec(vram="30Gi"), only_l4, classes)
    assert refused is not None and refused.reason is Reason.UNSCHEDULABLE
    assert "has 24.00Gi" in refused.message  # the A100 is not allowed


def test_no_matching_gpu_class_names_spec_gpu() -> None:
    refused = refusal(job_spec(vram="1Gi"), pool_spec(), [])
    assert refused is not None
    assert refused.reason is Reason.UNSCHEDULABLE
    assert "spec.gpu" in refused.message
    assert "needs 3.00Gi" in refused.message


def test_exactly_the_largest_gpu_fits() -> None:
    assert refusal(job_spec(vram="78Gi"), pool_spec(), CLUSTER) is None  # 2Gi model + 78Gi = 80Gi
    assert refusal(job_spec(vram=str(78 * GiB + 1)), pool_spec(), CLUSTER) is not None


def test_the_numbers_differ_even_when_the_need_is_just_over_the_gpu() -> None:
    """A need a few KiB over the largest GPU must not read "needs 80.00Gi ... has 80.00Gi"."""
    refused = refusal(job_spec(vram=str(78 * GiB + 128 * 1024)), pool_spec(), CLUSTER)
    assert refused is not None
    needed, largest = shown_gib(refused.message, "needs"), shown_gib(refused.message, "can get has")
    assert needed > largest == 80.0


@settings(max_examples=150, deadline=None)
@given(
    spec=testing.job_specs(),
    pool=testing.pool_specs(),
    classes=st.lists(
        st.builds(GpuClass, st.sampled_from(["A", "B", "C"]), st.integers(1, 128 * GiB)), max_size=4
    ),
)
def test_refusal_is_none_exactly_when_pool_model_task_and_vram_fit(
    spec: GenerationJobSpec, pool: WorkerPoolSpec, classes: list[GpuClass]
) -> None:
    served = {m.name: m for m in pool.models}
    model = next(iter(served.values()))
    task = pool.tasks[0]
    spec = spec.model_copy(update={"model": model.name, "task": task})
    if task not in model_tasks(pool.runtime, model):
        refused = refusal(spec, pool, classes)
        assert refused is not None and refused.reason is Reason.TASK_NOT_SERVED
        assert f"cannot do {task.value!r}" in refused.message
        return
    needed = parse_quantity(served[spec.model].vram).value() + working_vram(spec)
    largest = max((c.memory_bytes for c in classes), default=0)
    refused = refusal(spec, pool, classes)
    if needed <= largest:
        assert refused is None
        return
    assert refused is not None and refused.reason is Reason.UNSCHEDULABLE
    shown_need = shown_gib(refused.message, "needs")
    if classes:
        # Both numbers, rounded so that the one shown as needed is above the one available.
        assert shown_need > shown_gib(refused.message, "can get has")
        assert shown_gib(refused.message, "can get has") <= largest / GiB
    else:
        assert "spec.gpu" in refused.message
    assert shown_need >= needed / GiB


@pytest.mark.parametrize(
    ("size", "down", "up"),
    [
        (0, "0.00Gi", "0.00Gi"),
        (GiB, "1.00Gi", "1.00Gi"),
        (GiB + 1, "1.00Gi", "1.01Gi"),
        (GiB - 1, "0.99Gi", "1.00Gi"),
    ],
)
def test_gib_rounds_down_or_up_never_towards_the_wrong_side(size: int, down: str, up: str) -> None:
    assert gib(size) == down
    assert gib(size, up=True) == up


# --- retries, deadline, TTL -------------------------------------------------------------------


def test_retry_delay_doubles_from_the_backoff() -> None:
    assert [retry_delay(n, 5, 10) for n in range(1, 6)] == [10.0, 20.0, 40.0, 80.0, None]


def test_retries_exhausted() -> None:
    assert retry_delay(3, 3, 10) is None
    assert retry_delay(4, 3, 10) is None
    assert retry_delay(1, 1, 10) is None  # one attempt in all: nothing to retry


def test_zero_backoff_retries_at_once() -> None:
    assert retry_delay(1, 3, 0) == 0.0
    assert retry_delay(2, 3, 0) == 0.0


@settings(max_examples=200, deadline=None)
@given(attempts=st.integers(0, 120), max_attempts=st.integers(1, 100), backoff=st.integers(0, 3600))
def test_retry_delay_is_none_exactly_when_attempts_are_used_up(
    attempts: int, max_attempts: int, backoff: int
) -> None:
    delay = retry_delay(attempts, max_attempts, backoff)
    assert (delay is None) == (attempts >= max_attempts)
    if delay is not None:
        assert delay >= min(backoff, MAX_BACKOFF_SECONDS)
        following = retry_delay(attempts + 1, max_attempts, backoff)
        if following is not None and attempts >= 1:
            assert following == min(2 * delay, MAX_BACKOFF_SECONDS)


T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def test_deadline() -> None:
    assert not jobs.past_deadline(None, 60, T0)  # never started
    assert not jobs.past_deadline(T0, 60, T0 + timedelta(seconds=59.999))
    assert jobs.past_deadline(T0, 60, T0 + timedelta(seconds=60))
    assert jobs.past_deadline(T0, 60, T0 + timedelta(days=1))
    assert jobs.deadline(None, 60) is None
    assert jobs.deadline(T0, 60) == T0 + timedelta(seconds=60)


def test_ttl() -> None:
    assert not jobs.ttl_expired(None, 60, T0)  # not finished
    assert not jobs.ttl_expired(T0, None, T0 + timedelta(days=3650))  # kept when omitted
    assert not jobs.ttl_expired(T0, 60, T0 + timedelta(seconds=59))
    assert jobs.ttl_expired(T0, 60, T0 + timedelta(seconds=60))
    assert jobs.ttl_expired(T0, 0, T0)  # 0: deleted as soon as it finished


def test_retry_backoff_doubles_but_stops_at_an_hour():
    assert retry_delay(1, 100, 10) == 10 and retry_delay(2, 100, 10) == 20
    assert retry_delay(99, 100, 10) == MAX_BACKOFF_SECONDS


# --- models that fit on no GPU the pool can get ------------------------------------------------

SMALLEST_INPUT = {"prompt": "a lighthouse", "width": 64, "height": 64, "numImages": 1}


def test_a_model_whose_weights_and_smallest_job_fit_on_no_gpu_is_named_with_the_numbers() -> None:
    models = [
        {"name": "sd15", "source": "builtin://tiny-sd", "vram": "4Gi"},
        {"name": "huge", "source": "builtin://tiny-sd", "vram": "24Gi"},  # a 24 GiB card: no room to run
    ]
    spec = pool_spec(models=models, gpu={"count": 1})
    classes = pool_gpu_classes(spec, [T4, L4], 24 * GiB)
    (message,) = jobs.models_too_large(spec, classes)
    smallest = jobs.smallest_working_vram(Task.TEXT_TO_IMAGE)
    assert smallest == working_vram(job_spec(vram=None, input=SMALLEST_INPUT))
    assert message.startswith("model huge needs at least ")
    assert shown_gib(message, "needs at least") * GiB >= 24 * GiB + smallest
    assert "the smallest text-to-image job's working memory" in message
    assert message.endswith("the largest GPU the pool can get has 24.00Gi")
    # The same job is refused one by one, with the same kind of numbers.
    job = job_spec(model="huge", vram=None, input=SMALLEST_INPUT)
    assert refusal(job, spec, classes).reason == Reason.UNSCHEDULABLE  # type: ignore[union-attr]
    assert jobs.models_too_large(spec, pool_gpu_classes(spec, CLUSTER, 24 * GiB)) == []  # an A100 fits it
    assert jobs.models_too_large(spec, []) == []  # no GPU at all: the pool says InsufficientGPUs


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(seconds=30)
POOL_GONE = jobs.Refusal(Reason.POOL_NOT_FOUND, "no pool")


def view(**fields: Any) -> jobs.JobView:
    return jobs.JobView(
        **{
            "phase": None,
            "deleting": False,
            "cancel": False,
            "cancel_sent": False,
            "attempts": 0,
            "start_time": None,
            "completion_time": None,
            "timeout_seconds": 3600,
            "ttl_seconds": None,
            **fields,
        }
    )


S, P = jobs.Step, JobPhase


@pytest.mark.parametrize(
    ("job", "refused", "step"),
    [
        (view(), None, S.QUEUE),
        (view(phase=P.QUEUED, attempts=1, start_time=STARTED), None, S.QUEUE),
        (view(), POOL_GONE, S.REFUSE),
        (view(phase=P.DISPATCHED, attempts=1), POOL_GONE, S.FOLLOW),  # a run goes on: follow it
        (view(phase=P.RUNNING, attempts=1), None, S.FOLLOW),
        (view(phase=P.RUNNING, attempts=1, cancel=True), None, S.CANCEL_RUN),
        (view(phase=P.RUNNING, attempts=1, cancel=True, cancel_sent=True), None, S.NOTHING),
        (view(phase=P.QUEUED, cancel=True), None, S.CANCEL),
        (view(phase=P.SUCCEEDED, attempts=1, completion_time=NOW), None, S.NOTHING),
        (
            view(phase=P.SUCCEEDED, completion_time=NOW - timedelta(seconds=60), ttl_seconds=60),
            None,
            S.EXPIRE,
        ),
        (view(phase=P.FAILED, completion_time=NOW, ttl_seconds=60), None, S.NOTHING),
        (view(phase=P.RUNNING, attempts=1, deleting=True), None, S.FORGET),
        (view(phase=P.SUCCEEDED, deleting=True), None, S.FORGET),
        # waiting for a retry when its time ran out: failed, not dispatched again
        (
            view(phase=P.QUEUED, attempts=1, start_time=NOW - timedelta(seconds=61), timeout_seconds=60),
            None,
            S.TIME_OUT,
        ),
        (
            view(phase=P.QUEUED, attempts=1, start_time=NOW - timedelta(seconds=59), timeout_seconds=60),
            None,
            S.QUEUE,
        ),
    ],
)
def test_next_step(job: jobs.JobView, refused: jobs.Refusal | None, step: jobs.Step) -> None:
    assert jobs.next_step(job, refused, NOW) is step


FOREVER = datetime.max.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("job", "quiet_until"),
    [
        (view(phase=P.SUCCEEDED, attempts=1, completion_time=NOW), FOREVER),  # kept: nothing to do
        (view(phase=P.CANCELLED, cancel=True), FOREVER),
        (view(phase=P.FAILED, completion_time=NOW, ttl_seconds=60), NOW + timedelta(seconds=60)),
        (view(phase=P.SUCCEEDED, deleting=True), None),  # to forget
        (view(phase=P.QUEUED), None),
        (view(phase=P.QUEUED, attempts=1, start_time=STARTED), None),  # its deadline may pass
        (view(phase=P.RUNNING, attempts=1), None),  # to follow
        (view(phase=P.PENDING), None),  # its pool may change
    ],
)
def test_quiet_until(job: jobs.JobView, quiet_until: datetime | None) -> None:
    assert jobs.quiet_until(job) == quiet_until
    if quiet_until is not None:  # next_step says nothing until then, whatever the pool says
        for now in (NOW, NOW + timedelta(seconds=59), NOW + timedelta(days=3650)):
            expected = S.NOTHING if now < quiet_until else S.EXPIRE
            for refused in (None, POOL_GONE):
                assert jobs.next_step(job, refused, now) is expected


def run(job: str, attempt: int, uid: str | None = "u1") -> jobs.WorkerRun:
    return jobs.WorkerRun("sd-0", f"{job.replace('/', '_')}_{attempt}", job, attempt, uid)


@pytest.mark.parametrize(
    ("runs", "live", "stray"),
    [
        ([run("a/x", 1)], {"a/x": (1, "u1")}, []),  # its job's live attempt
        ([run("a/x", 1, uid=None)], {"a/x": (1, "u1")}, []),  # a worker that does not say
        ([run("a/x", 1)], {}, [run("a/x", 1)]),  # its job is gone, or no longer Dispatched/Running
        ([run("a/x", 1), run("a/x", 2)], {"a/x": (2, "u1")}, [run("a/x", 1)]),  # an attempt moved past
        ([run("a/x", 2)], {"a/x": (1, "u1")}, [run("a/x", 2)]),  # a job of that name made anew
        ([run("a/x", 1)], {"a/x": (1, "u2")}, [run("a/x", 1)]),  # the same attempt of an earlier job
        ([run("a/x", 1)], {"b/x": (1, "u1")}, [run("a/x", 1)]),  # the same name in another namespace
    ],
)
def test_stray_runs(
    runs: list[jobs.WorkerRun], live: dict[str, tuple[int, str]], stray: list[jobs.WorkerRun]
) -> None:
    assert jobs.stray_runs(runs, live) == stray
