"""The engine with injected pipelines: failures (GPU out of memory included) end the run and
free its VRAM; admission by VRAM; readiness; local artifacts. The model cache (loads on demand,
eviction, preload, failed models) is tested in test_worker_engine_models.py."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from gpufleet.api.inputs import MAX_PROGRESS_TEXT_CHARS, MAX_RESULT_TEXT_CHARS, Task
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker.artifacts import ArtifactStore
from gpufleet_worker.config import WorkerConfig
from gpufleet_worker.engine import Engine
from gpufleet_worker.errors import Refusal
from gpufleet_worker.fetch import InputRefused
from gpufleet_worker.inventory import SimulatedInventory
from gpufleet_worker.metrics import WorkerMetrics
from gpufleet_worker.models import Generation, ImagePipeline, OutputFile, Outputs, StepHook, encode_png
from gpufleet_worker.protocol import Phase, Reason, SubmitRequest

GIB = 2**30


class FakePipeline(ImagePipeline):
    """Takes ``steps`` steps; ``fail`` is raised after the first, ``gate`` holds every step."""

    tasks = frozenset({Task.TEXT_TO_IMAGE})

    def __init__(self, fail: BaseException | None = None, gate: threading.Event | None = None) -> None:
        self.fail, self.gate = fail, gate
        self.calls = 0

    def generate(self, job: Generation, on_step: StepHook) -> list[Image.Image]:
        self.calls += 1
        for step in range(1, job.input.steps + 1):
            if self.gate is not None:
                self.gate.wait(5)
            on_step(step, job.input.steps)
            if self.fail is not None:
                raise self.fail
        return [Image.new("RGB", (job.input.width, job.input.height), (job.seed % 256, 0, 0))]


def make_engine(tmp_path: Path, pipeline: Any, load: bool = True, **config: Any) -> Engine:
    worker_config = WorkerConfig.model_validate(
        {
            "name": "test-worker",
            "tokenFile": str(tmp_path / "token"),
            "models": [{"name": "fake", "source": "builtin://tiny-sd", "vram": "1Gi"}],
            "simulatedGpu": {"memory": "8Gi"},
            "localOutputRoot": str(tmp_path),
        }
        | config
    )
    inventory = SimulatedInventory(worker_config.simulated_gpu, worker_config.name)

    def loader(spec: Any, device: str) -> Any:
        if isinstance(pipeline, Exception):
            raise pipeline
        return pipeline

    engine = Engine(
        config=worker_config,
        inventory=inventory,
        devices=dict.fromkeys(inventory.uuids, "cpu"),
        store=ArtifactStore(None, tmp_path),
        metrics=WorkerMetrics(),
        loader=loader,
    )
    if load:
        engine.preload_models()
    return engine


def request(tmp_path: Path, job: str = "job", vram: int = GIB, **input_fields: Any) -> SubmitRequest:
    return SubmitRequest.model_validate(
        {
            "jobId": f"ns/{job}",
            "attempt": 1,
            "task": "text-to-image",
            "model": "fake",
            "input": {"prompt": "x", "width": 64, "height": 64, "steps": 3, "seed": 5} | input_fields,
            "vramBytes": vram,
            "outputUri": f"file://{tmp_path}/out/{job}/",
        }
    )


def finished(engine: Engine, run_id: str) -> Any:
    return wait_for(lambda: engine.get(run_id), lambda s: s.phase is not Phase.RUNNING, 10, what=run_id)


def reserved(engine: Engine) -> int:
    (gpu,) = engine.snapshot().gpus
    return gpu.reserved_bytes


def test_a_gpu_out_of_memory_fails_the_run_with_out_of_memory_and_frees_its_vram(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakePipeline(fail=torch.cuda.OutOfMemoryError("CUDA out of memory")))
    status, created = engine.submit(request(tmp_path, vram=3 * GIB))
    assert created and status.vram_reserved_bytes == 3 * GIB
    result = finished(engine, status.run_id)
    assert (result.phase, result.reason) == (Phase.FAILED, Reason.OUT_OF_MEMORY)
    assert "out of memory" in result.message
    assert result.vram_reserved_bytes == 0
    assert reserved(engine) == GIB  # the model's weights only
    exposition = engine.metrics.exposition().decode()
    assert 'phase="Failed",reason="OutOfMemory"} 1.0' in exposition
    engine.shutdown()


def test_any_other_failure_ends_the_run_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    pipeline = FakePipeline(fail=RuntimeError("boom"))
    engine = make_engine(tmp_path, pipeline)
    result = finished(engine, engine.submit(request(tmp_path, "a"))[0].run_id)
    assert (result.reason, result.message) == (Reason.INTERNAL_ERROR, "RuntimeError: boom")
    assert reserved(engine) == GIB
    pipeline.fail = None
    assert finished(engine, engine.submit(request(tmp_path, "b"))[0].run_id).phase is Phase.SUCCEEDED
    engine.shutdown()


def test_runs_share_a_gpu_while_vram_allows_and_cancel_frees_it(tmp_path: Path) -> None:
    gate = threading.Event()
    engine = make_engine(tmp_path, FakePipeline(gate=gate))
    first, _ = engine.submit(request(tmp_path, "a", vram=3 * GIB, steps=200))
    second, _ = engine.submit(request(tmp_path, "b", vram=4 * GIB, steps=200))
    assert reserved(engine) == 8 * GIB
    with pytest.raises(Refusal) as refused:
        engine.submit(request(tmp_path, "c", vram=1))
    assert refused.value.reason is Reason.INSUFFICIENT_VRAM
    assert (refused.value.asked_bytes, refused.value.free_bytes) == (1, 0)

    engine.cancel(first.run_id)
    gate.set()
    assert finished(engine, first.run_id).phase is Phase.CANCELLED
    assert engine.submit(request(tmp_path, "c", vram=3 * GIB))[1]
    engine.cancel(second.run_id)
    engine.shutdown()
    assert reserved(engine) == GIB


def test_artifacts_are_written_with_their_sha256(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakePipeline())
    result = finished(engine, engine.submit(request(tmp_path))[0].run_id)
    (artifact,) = result.artifacts
    written = (tmp_path / "out" / "job" / "image-0.png").read_bytes()
    assert artifact.url == f"file://{tmp_path}/out/job/image-0.png"
    assert (artifact.sha256, artifact.size_bytes) == (hashlib.sha256(written).hexdigest(), len(written))
    assert result.message.startswith("1 image in ")
    engine.shutdown()


PRELOADED = [{"name": "fake", "source": "builtin://tiny-sd", "vram": "1Gi", "preload": True}]


def test_nothing_is_admitted_before_the_preload_models_are_loaded(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakePipeline(), load=False, models=PRELOADED)
    assert engine.readiness_problem() == "preload models not loaded yet: fake"
    with pytest.raises(Refusal) as refused:
        engine.submit(request(tmp_path))
    assert refused.value.reason is Reason.NOT_READY
    engine.preload_models()
    assert engine.readiness_problem() is None and engine.snapshot().ready
    engine.shutdown()


def test_a_preload_model_that_fails_to_load_is_failed_and_refused(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, OSError("no such model directory"), models=PRELOADED)
    (model,) = engine.snapshot().models
    assert (model.state, model.message) == ("Failed", "model fake: OSError: no such model directory")
    assert engine.readiness_problem() is None  # the worker serves its other models
    with pytest.raises(Refusal) as refused:
        engine.submit(request(tmp_path))
    assert (refused.value.reason, refused.value.status_code) == (Reason.MODEL_FAILED, 422)
    assert reserved(engine) == 0
    engine.shutdown()


def test_a_preload_model_larger_than_the_gpu_fails_to_load(tmp_path: Path) -> None:
    big = [{"name": "fake", "source": "builtin://tiny-sd", "vram": "9Gi", "preload": True}]
    engine = make_engine(tmp_path, FakePipeline(), models=big)
    (model,) = engine.snapshot().models
    assert model.state == "Failed" and "does not fit on GPU" in model.message
    engine.shutdown()


def test_requests_for_what_the_worker_cannot_do_are_refused(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakePipeline())
    finished(engine, engine.submit(request(tmp_path, "first"))[0].run_id)  # its tasks show once loaded
    cases = [
        (request(tmp_path).model_copy(update={"model": "sdxl"}), Reason.UNKNOWN_MODEL),
        (request(tmp_path).model_copy(update={"task": Task.IMAGE_TO_IMAGE}), Reason.UNSUPPORTED_TASK),
        (request(tmp_path, prompt=""), Reason.INVALID_REQUEST),
        (
            request(tmp_path).model_copy(update={"output_uri": "file:///elsewhere/"}),
            Reason.UNSUPPORTED_OUTPUT,
        ),
    ]
    for bad, reason in cases:
        with pytest.raises(Refusal) as refused:
            engine.submit(bad)
        assert refused.value.reason is reason
    assert [run.job_id for run in engine.runs()] == ["ns/first"]
    engine.shutdown()


@pytest.mark.parametrize(
    ("output_uri", "rule"),
    [
        ("s3://169.254.169.254/latest/", "must not be an IP address"),
        ("s3://10.0.0.7/out/", "must not be an IP address"),
        ("s3://my..bucket/out/", "must not contain '..', '.-' or '-.'"),
        ("s3://bucket/studio/../other/", "'.' and '..' path segments"),
        ("s3://bucket/./studio/", "'.' and '..' path segments"),
        ("file://{root}/a/../b/", "'.' and '..' path segments"),
    ],
)
def test_outputs_that_can_never_be_written_are_refused_before_any_gpu_time(
    tmp_path: Path, output_uri: str, rule: str
) -> None:
    pipeline = FakePipeline()
    engine = make_engine(tmp_path, pipeline)
    bad = request(tmp_path).model_copy(update={"output_uri": output_uri.format(root=tmp_path)})
    weights = reserved(engine)
    with pytest.raises(Refusal) as refused:
        engine.submit(bad)
    assert refused.value.reason is Reason.UNSUPPORTED_OUTPUT
    assert refused.value.message.startswith("outputUri: ") and rule in refused.value.message
    assert (engine.runs(), reserved(engine), pipeline.calls) == ([], weights, 0)
    engine.shutdown()


def test_only_the_newest_finished_runs_are_kept(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, FakePipeline(), keepFinishedJobs=2)
    for job in ("a", "b", "c", "d"):
        finished(engine, engine.submit(request(tmp_path, job))[0].run_id)
    engine.submit(request(tmp_path, "e"))
    kept = [s.job_id for s in engine.runs()]
    assert kept[-1] == "ns/e" and len(kept) <= 3 and "ns/a" not in kept
    engine.shutdown()


class OutputsPipeline:
    """Returns the outputs it is given, as a task pipeline does."""

    tasks = frozenset({Task.TEXT_TO_IMAGE})

    def __init__(self, outputs: Outputs | BaseException) -> None:
        self.outputs = outputs

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        on_step(1, 1, "only")
        if isinstance(self.outputs, BaseException):
            raise self.outputs
        return self.outputs


def test_an_artifact_that_fails_its_check_fails_the_run_and_nothing_is_written(tmp_path: Path) -> None:
    good = OutputFile("answer.txt", b"fine", "text/plain")
    broken = OutputFile("image.svg", b"<svg xmlns='http://www.w3.org/2000/svg'", "image/svg+xml")
    engine = make_engine(tmp_path, OutputsPipeline(Outputs(files=[good, broken], summary="two files")))
    result = finished(engine, engine.submit(request(tmp_path))[0].run_id)
    assert (result.phase, result.reason) == (Phase.FAILED, Reason.INVALID_OUTPUT)
    assert result.message.startswith("image.svg: not well-formed XML")
    assert result.artifacts == [] and not (tmp_path / "out").exists()
    assert reserved(engine) == GIB
    engine.shutdown()


def test_a_mask_of_another_size_than_its_input_is_refused(tmp_path: Path) -> None:
    mask = OutputFile("mask-0-0.png", encode_png(Image.new("L", (64, 32))), "image/png", (64, 64))
    engine = make_engine(tmp_path, OutputsPipeline(Outputs(files=[mask])))
    result = finished(engine, engine.submit(request(tmp_path))[0].run_id)
    assert (result.reason, result.message) == (Reason.INVALID_OUTPUT, "mask-0-0.png: 64x32, expected 64x64")
    engine.shutdown()


def test_text_goes_to_the_result_cut_to_its_bound_and_whole_to_the_artifact(tmp_path: Path) -> None:
    text = "é" * (MAX_RESULT_TEXT_CHARS + 10)
    answer = OutputFile("answer.txt", text.encode(), "text/plain")
    engine = make_engine(tmp_path, OutputsPipeline(Outputs(files=[answer], text=text, summary="many tokens")))
    result = finished(engine, engine.submit(request(tmp_path))[0].run_id)
    assert result.phase is Phase.SUCCEEDED, result.message
    assert result.result is not None and result.result.truncated
    assert result.result.text == "é" * MAX_RESULT_TEXT_CHARS
    (artifact,) = result.artifacts
    assert (artifact.name, artifact.media_type) == ("answer.txt", "text/plain")
    assert (tmp_path / "out" / "job" / "answer.txt").read_text() == text
    assert result.message.startswith("many tokens in ")
    engine.shutdown()


def test_prompts_the_worker_refuses_fail_the_run_with_input_refused(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, OutputsPipeline(InputRefused("input.segment.points[0]: outside")))
    result = finished(engine, engine.submit(request(tmp_path))[0].run_id)
    assert (result.reason, result.message) == (Reason.INPUT_REFUSED, "input.segment.points[0]: outside")
    engine.shutdown()


def test_progress_carries_the_unit_and_stage(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, OutputsPipeline(Outputs(summary="nothing")))
    run_id = engine.submit(request(tmp_path))[0].run_id
    finished(engine, run_id)
    events, _ = engine.events_after(run_id, 0)
    progress = [e.progress for e in events if e.progress is not None]
    assert [(p.step, p.total_steps, p.unit, p.stage) for p in progress] == [
        (0, 3, "steps", "LoadingModel"),  # the model was not resident yet
        (1, 1, "steps", "only"),
    ]
    engine.shutdown()


class TextPipeline:
    """Reports a growing text with each of its steps, then holds until ``gate`` opens."""

    tasks = frozenset({Task.TEXT_TO_IMAGE})

    def __init__(self, texts: list[str], gate: threading.Event) -> None:
        self.texts, self.gate = texts, gate

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        for step, text in enumerate(self.texts, 1):
            on_step(step, len(self.texts), text=text)
        self.gate.wait(5)
        return Outputs(text=self.texts[-1], summary="text")


def test_progress_carries_the_end_of_the_text_so_far_and_an_ended_run_keeps_it_in_its_status(
    tmp_path: Path,
) -> None:
    texts = ["a", "a b", "a b " + "c" * MAX_PROGRESS_TEXT_CHARS]
    gate = threading.Event()
    engine = make_engine(tmp_path, TextPipeline(texts, gate))
    run_id = engine.submit(request(tmp_path))[0].run_id

    def reported() -> list[str | None]:
        events, _ = engine.events_after(run_id, 0)
        return [e.progress.text for e in events if e.progress is not None and e.progress.step > 0]

    running = wait_for(reported, lambda seen: len(seen) == len(texts), 10, what="text reports")
    assert running == [*texts[:2], texts[2][-MAX_PROGRESS_TEXT_CHARS:]]
    assert engine.get(run_id).progress.text == texts[2][-MAX_PROGRESS_TEXT_CHARS:]
    gate.set()
    result = finished(engine, run_id)
    assert result.phase is Phase.SUCCEEDED, result.message
    assert result.progress.text == texts[2][-MAX_PROGRESS_TEXT_CHARS:]
    assert result.result is not None and result.result.text == texts[2]
    assert reported() == [None, None, None]  # the kept log drops the per-token texts
    final = engine.events_after(run_id, 0)[0][-1].status
    assert final is not None and final.progress.text == texts[2][-MAX_PROGRESS_TEXT_CHARS:]
    engine.shutdown()


def test_a_job_made_anew_under_its_name_gets_its_own_run_once_the_earlier_one_has_ended(
    tmp_path: Path,
) -> None:
    gate = threading.Event()
    engine = make_engine(tmp_path, FakePipeline(gate=gate))
    earlier = request(tmp_path, "a", steps=200).model_copy(update={"job_uid": "uid-1"})
    anew = earlier.model_copy(update={"job_uid": "uid-2"})
    try:
        first, _ = engine.submit(earlier)
        again, created = engine.submit(earlier)  # the same job again: the same run
        assert (again.run_id, again.job_uid, created) == (first.run_id, "uid-1", False)
        with pytest.raises(Refusal) as refused:
            engine.submit(anew)  # the earlier job's run still holds the name
        assert refused.value.reason is Reason.SPEC_MISMATCH
        assert "earlier job of that name" in str(refused.value)
        engine.cancel(first.run_id)
    finally:
        gate.set()
    assert finished(engine, first.run_id).job_uid == "uid-1"
    second, created = engine.submit(anew)
    assert created and second.job_uid == "uid-2" and second.phase is Phase.RUNNING
    assert finished(engine, second.run_id).phase is Phase.SUCCEEDED
    engine.shutdown()
