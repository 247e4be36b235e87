"""The engine's VRAM model cache with a fake loader: loads on demand onto the run's GPU, runs
waiting on one shared load, LRU eviction within the budget, busy and pinned models kept,
preload, failed models (the others keep serving), download progress and the counters."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpufleet.api.inputs import Task
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker.artifacts import ArtifactStore
from gpufleet_worker.config import ModelSpec, WorkerConfig
from gpufleet_worker.engine import Engine
from gpufleet_worker.errors import Refusal
from gpufleet_worker.inventory import SimulatedInventory
from gpufleet_worker.metrics import WorkerMetrics
from gpufleet_worker.modelfiles import FetchProgress, ModelSourceError, SourceProblem
from gpufleet_worker.models import Generation, ImagePipeline, StepHook
from gpufleet_worker.protocol import (
    LOADING_MODEL_STAGE,
    EventName,
    Inventory,
    JobStatus,
    ModelCacheInfo,
    Phase,
    Reason,
    SubmitRequest,
)

GIB = 2**30


class GatedPipeline(ImagePipeline):
    """One step per input step; each waits while its model's run gate is closed."""

    tasks = frozenset({Task.TEXT_TO_IMAGE})

    def __init__(self, gates: dict[str, threading.Event], name: str, tasks: frozenset[Task] = tasks) -> None:
        self.gates, self.name, self.tasks = gates, name, tasks

    def generate(self, job: Generation, on_step: StepHook) -> list[Image.Image]:
        for step in range(1, job.input.steps + 1):
            if self.name in self.gates:
                self.gates[self.name].wait(10)
            on_step(step, job.input.steps)
        return [Image.new("RGB", (job.input.width, job.input.height))]


class Loader:
    """Counts loads per model; a load waits while its model's load gate is closed (``hold``)
    and raises what ``failures`` holds for the model; runs wait while their model's run gate
    is closed (``hold_runs``)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.load_gates: dict[str, threading.Event] = {}
        self.run_gates: dict[str, threading.Event] = {}
        self.failures: dict[str, Exception] = {}
        self.tasks: dict[str, frozenset[Task]] = {}
        self.loading = 0  # loads in progress now
        self.most_at_once = 0

    def __call__(self, spec: ModelSpec, device: str) -> GatedPipeline:
        self.calls[spec.name] += 1
        self.loading += 1
        self.most_at_once = max(self.most_at_once, self.loading)
        try:
            return self._load(spec)
        finally:
            self.loading -= 1

    def _load(self, spec: ModelSpec) -> GatedPipeline:
        if spec.name in self.load_gates:
            self.load_gates[spec.name].wait(10)
        if spec.name in self.failures:
            raise self.failures[spec.name]
        return GatedPipeline(self.run_gates, spec.name, self.tasks.get(spec.name, GatedPipeline.tasks))

    def hold(self, name: str) -> threading.Event:
        """Holds ``name``'s loads until the returned event is set."""
        self.load_gates[name] = threading.Event()
        return self.load_gates[name]

    def hold_runs(self, name: str) -> threading.Event:
        """Holds ``name``'s runs until the returned event is set."""
        self.run_gates[name] = threading.Event()
        return self.run_gates[name]


class RemoteFiles:
    """A ModelFiles that 'downloads' in two chunks, or fails with a ModelSourceError: always for
    the ``broken`` models (a permanent cause), the first ``late[name]`` times for the ``late``
    ones (a transient cause). ``calls`` has the monotonic time of each call, per model."""

    def __init__(self, broken: set[str] | None = None, late: dict[str, int] | None = None) -> None:
        self.broken = broken or set()
        self.late = late or {}
        self.fetched: set[str] = set()
        self.calls: dict[str, list[float]] = {}

    def local(self, spec: ModelSpec, on_progress: FetchProgress) -> ModelSpec:
        calls = self.calls.setdefault(spec.name, [])
        calls.append(time.monotonic())
        if spec.name in self.broken:
            raise ModelSourceError(f"s3://models/{spec.name}: digest mismatch", SourceProblem.DIGEST_MISMATCH)
        if len(calls) <= self.late.get(spec.name, 0):
            raise ModelSourceError(
                f"s3://models/{spec.name}: no objects under it yet", SourceProblem.EMPTY_PREFIX
            )
        on_progress(50, 100)
        on_progress(100, 100)
        self.fetched.add(spec.name)
        return spec

    def on_disk_bytes(self, spec: ModelSpec) -> int | None:
        return 100 if spec.name in self.fetched else None

    def cache_info(self) -> ModelCacheInfo:
        return ModelCacheInfo(path="/cache", capacity_bytes=1000, used_bytes=100 * len(self.fetched))


def make_engine(
    tmp_path: Path,
    models: dict[str, int],
    gpu_gib: int = 8,
    gpus: int = 1,
    preload: frozenset[str] = frozenset(),
    loader: Loader | None = None,
    retry: dict[str, float] | None = None,
    **engine_args: Any,
) -> tuple[Engine, Loader]:
    config = WorkerConfig.model_validate(
        {
            "name": "test-worker",
            "tokenFile": str(tmp_path / "token"),
            "models": [
                {"name": n, "source": "builtin://tiny-sd", "vram": f"{g}Gi", "preload": n in preload}
                for n, g in models.items()
            ],
            "simulatedGpu": {"memory": f"{gpu_gib}Gi", "count": gpus},
            "localOutputRoot": str(tmp_path),
            "maxJobsPerGpu": 4,
            **({"modelRetry": retry} if retry else {}),
        }
    )
    loader = loader or Loader()
    return engine_of(config, tmp_path, loader, **engine_args), loader


def engine_of(config: WorkerConfig, tmp_path: Path, loader: Any, **engine_args: Any) -> Engine:
    """An Engine for ``config`` on its simulated GPUs (runs on CPU), loading through ``loader``."""
    inventory = SimulatedInventory(config.simulated_gpu, config.name)
    return Engine(
        config=config,
        inventory=inventory,
        devices=dict.fromkeys(inventory.uuids, "cpu"),
        store=ArtifactStore(None, tmp_path),
        metrics=WorkerMetrics(),
        loader=loader,
        **engine_args,
    )


def request(tmp_path: Path, job: str, model: str, vram_gib: int = 1, steps: int = 2) -> SubmitRequest:
    return SubmitRequest.model_validate(
        {
            "jobId": f"ns/{job}",
            "attempt": 1,
            "task": "text-to-image",
            "model": model,
            "input": {"prompt": "x", "width": 64, "height": 64, "steps": steps, "seed": 5},
            "vramBytes": vram_gib * GIB,
            "outputUri": f"file://{tmp_path}/out/{job}/",
        }
    )


def run(engine: Engine, tmp_path: Path, job: str, model: str, vram_gib: int = 1) -> JobStatus:
    """Submits a job and waits for its end."""
    return finished(engine, engine.submit(request(tmp_path, job, model, vram_gib))[0].run_id)


def finished(engine: Engine, run_id: str) -> JobStatus:
    return wait_for(lambda: engine.get(run_id), lambda s: s.phase is not Phase.RUNNING, 10, what=run_id)


def models_of(inventory: Inventory) -> dict[str, Any]:
    return {m.name: m for m in inventory.models}


def resident(inventory: Inventory) -> dict[str, str]:
    """Model name -> state, on the only GPU."""
    (gpu,) = inventory.gpus
    return {m.name: m.state.value for m in gpu.models}


def within_budget(inventory: Inventory) -> None:
    for gpu in inventory.gpus:
        assert gpu.models_bytes + gpu.jobs_bytes == gpu.reserved_bytes <= gpu.memory_total_bytes
        assert gpu.models_bytes == sum(m.vram_bytes for m in gpu.models)


def test_a_model_loads_onto_the_runs_gpu_when_first_needed_and_later_runs_are_warm(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"a": 2, "b": 2})
    engine.preload_models()
    before = engine.snapshot()
    assert before.ready and {m.state.value for m in before.models} == {"Available"}
    assert before.gpus[0].models == [] and loader.calls == Counter()

    cold = run(engine, tmp_path, "cold", "a")
    assert cold.phase is Phase.SUCCEEDED, cold.message
    assert cold.model_load is not None and not cold.model_load.warm and not cold.model_load.loading
    assert cold.model_load.source == "disk" and cold.model_load.seconds is not None
    events, _ = engine.events_after(cold.run_id, 0)
    stages = [e.progress.stage for e in events if e.event is EventName.PROGRESS and e.progress]
    assert stages[0] == LOADING_MODEL_STAGE

    warm = run(engine, tmp_path, "warm", "a")
    assert warm.model_load is not None and (warm.model_load.warm, warm.model_load.source) == (
        True,
        "resident",
    )
    inventory = engine.snapshot()
    a = models_of(inventory)["a"]
    assert (a.state.value, a.loads, a.warm_hits, a.resident_gpus) == ("Loaded", 1, 1, [cold.gpu])
    assert (
        a.load_seconds is not None and a.on_disk and a.disk_bytes is None
    )  # local files, none in the disk cache
    assert models_of(inventory)["b"].state.value == "Available"
    assert resident(inventory) == {"a": "Loaded"}
    assert inventory.gpus[0].models[0].running_jobs == 0 and inventory.gpus[0].evictable_bytes == 2 * GIB
    assert loader.calls == Counter({"a": 1})
    engine.shutdown()


def test_runs_for_a_model_being_loaded_wait_on_that_one_load(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"a": 2})
    release = loader.hold("a")
    first, _ = engine.submit(request(tmp_path, "first", "a"))
    second, _ = engine.submit(request(tmp_path, "second", "a"))
    assert first.model_load is not None and first.model_load.loading
    assert second.model_load is not None and (second.model_load.warm, second.model_load.loading) == (
        False,
        True,
    )
    wait_for(engine.snapshot, lambda i: models_of(i)["a"].state.value == "Loading", 5, what="loading")
    inventory = engine.snapshot()
    assert models_of(inventory)["a"].loading_gpus == [first.gpu] and resident(inventory) == {"a": "Loading"}
    assert inventory.gpus[0].models[0].running_jobs == 2 and inventory.gpus[0].evictable_bytes == 0
    assert [j.model_load.loading for j in inventory.jobs if j.model_load] == [True, True]
    within_budget(inventory)
    release.set()
    for status in (first, second):
        done = finished(engine, status.run_id)
        assert done.phase is Phase.SUCCEEDED and done.model_load is not None
        assert not done.model_load.loading and done.model_load.seconds is not None
    assert loader.calls == Counter({"a": 1})
    assert models_of(engine.snapshot())["a"].loads == 1
    engine.shutdown()


def test_idle_models_are_evicted_least_recently_used_first_within_the_budget(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"a": 3, "b": 3, "c": 3})
    for job, model in [("1", "a"), ("2", "b"), ("3", "a")]:  # b is now the least recently used
        assert run(engine, tmp_path, job, model).phase is Phase.SUCCEEDED
        within_budget(engine.snapshot())
    assert resident(engine.snapshot()) == {"a": "Loaded", "b": "Loaded"}
    assert run(engine, tmp_path, "4", "c").phase is Phase.SUCCEEDED  # 3 + 3 + 3 + 1 > 8: one goes
    inventory = engine.snapshot()
    within_budget(inventory)
    assert resident(inventory) == {"a": "Loaded", "c": "Loaded"}
    models = models_of(inventory)
    assert (models["b"].evictions, models["b"].state.value, models["a"].evictions) == (1, "Available", 0)
    again = run(engine, tmp_path, "5", "b")  # b comes back cold: a load, and a is evicted
    assert again.model_load is not None and not again.model_load.warm
    assert loader.calls == Counter({"a": 1, "b": 2, "c": 1})
    assert models_of(engine.snapshot())["a"].evictions == 1
    engine.shutdown()


def test_a_model_with_a_run_is_never_evicted_and_the_refusal_has_the_numbers(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"a": 3, "b": 3, "c": 2, "d": 3})
    assert run(engine, tmp_path, "0", "a").phase is Phase.SUCCEEDED
    hold_a = loader.hold_runs("a")
    busy, _ = engine.submit(request(tmp_path, "busy", "a"))  # a is busy from now on, and oldest
    assert run(engine, tmp_path, "1", "b").phase is Phase.SUCCEEDED
    hold_c = loader.hold_runs("c")
    # c needs 2 + 1: the idle b goes, never the busy a, although a was used first
    c_run, _ = engine.submit(request(tmp_path, "c", "c"))
    wait_for(engine.snapshot, lambda i: resident(i).get("c") == "Loaded", 5, what="c loaded")
    assert set(resident(engine.snapshot())) == {"a", "c"}
    with pytest.raises(Refusal) as refused:  # a and c busy: 3 + 1 + 2 + 1 held, 1 free
        engine.submit(request(tmp_path, "d", "d"))
    assert refused.value.reason is Reason.INSUFFICIENT_VRAM and refused.value.status_code == 409
    assert (refused.value.asked_bytes, refused.value.free_bytes) == (4 * GIB, GIB)
    assert "model d" in refused.value.message
    hold_a.set()
    hold_c.set()
    assert finished(engine, busy.run_id).phase is Phase.SUCCEEDED
    assert finished(engine, c_run.run_id).phase is Phase.SUCCEEDED
    assert run(engine, tmp_path, "d2", "d").phase is Phase.SUCCEEDED  # idle now: room is made
    within_budget(engine.snapshot())
    engine.shutdown()


def test_preloaded_models_are_resident_on_every_gpu_and_pinned(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"p": 3, "a": 3, "b": 3}, gpus=2, preload=frozenset({"p"}))
    assert not engine.snapshot().ready
    engine.preload_models()
    inventory = engine.snapshot()
    assert inventory.ready and loader.calls == Counter({"p": 2})
    p = models_of(inventory)["p"]
    assert (p.state.value, p.preload, len(p.resident_gpus)) == ("Loaded", True, 2)
    assert all(gpu.models[0].pinned and gpu.evictable_bytes == 0 for gpu in inventory.gpus)
    # On each GPU, p (3) stays: a and b (3 each) take turns in what is left.
    for job, model in [("1", "a"), ("2", "a"), ("3", "b"), ("4", "b"), ("5", "a"), ("6", "b")]:
        status = run(engine, tmp_path, job, model)
        assert status.phase is Phase.SUCCEEDED
    inventory = engine.snapshot()
    assert models_of(inventory)["p"].evictions == 0 and len(models_of(inventory)["p"].resident_gpus) == 2
    within_budget(inventory)
    with pytest.raises(Refusal) as refused:  # p is pinned: 5 of 8 is all a run could get
        engine.submit(request(tmp_path, "big", "a", vram_gib=3))
    assert refused.value.asked_bytes - refused.value.free_bytes == GIB
    assert run(engine, tmp_path, "p", "p").model_load.warm  # type: ignore[union-attr]
    engine.shutdown()


def test_models_load_one_at_a_time(tmp_path: Path) -> None:
    """Loaders import their libraries on first use (transformers' lazy imports are not
    thread-safe): two cold models load one after the other."""
    engine, loader = make_engine(tmp_path, {"a": 2, "b": 2})
    release = loader.hold("a")
    first, _ = engine.submit(request(tmp_path, "1", "a"))
    second, _ = engine.submit(request(tmp_path, "2", "b"))
    wait_for(lambda: loader.calls, lambda calls: calls["a"] == 1, 5, what="a's load to start")
    assert loader.calls["b"] == 0  # waits for a's load
    release.set()
    assert {finished(engine, s.run_id).phase for s in (first, second)} == {Phase.SUCCEEDED}
    assert loader.most_at_once == 1
    engine.shutdown()


def test_a_model_that_fails_to_load_fails_its_runs_and_the_others_keep_serving(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"bad": 2, "good": 2})
    loader.failures["bad"] = OSError("no such model directory")
    release = loader.hold("bad")
    first, _ = engine.submit(request(tmp_path, "first", "bad"))
    second, _ = engine.submit(request(tmp_path, "second", "bad"))
    release.set()
    for status in (first, second):
        done = finished(engine, status.run_id)
        assert (done.phase, done.reason) == (Phase.FAILED, Reason.MODEL_FAILED)
        assert done.message == "model bad: OSError: no such model directory"
        assert done.model_load is not None and not done.model_load.loading
    inventory = engine.snapshot()
    bad = models_of(inventory)["bad"]
    assert (bad.state.value, bad.message) == ("Failed", "model bad: OSError: no such model directory")
    assert inventory.gpus[0].reserved_bytes == 0  # the failed load's VRAM is back
    with pytest.raises(Refusal) as refused:
        engine.submit(request(tmp_path, "third", "bad"))
    assert (refused.value.reason, refused.value.status_code) == (Reason.MODEL_FAILED, 422)
    assert "no such model directory" in refused.value.message
    assert run(engine, tmp_path, "other", "good").phase is Phase.SUCCEEDED
    assert loader.calls["bad"] == 1
    engine.shutdown()


def test_files_are_fetched_before_each_load_with_progress_and_source_errors_fail_the_model(
    tmp_path: Path,
) -> None:
    files = RemoteFiles(broken={"gone"})
    engine, _ = make_engine(tmp_path, {"a": 2, "gone": 2}, model_files=files)
    assert models_of(engine.snapshot())["a"].on_disk is False
    status = run(engine, tmp_path, "1", "a")
    assert status.phase is Phase.SUCCEEDED and status.model_load is not None
    load = status.model_load
    assert (load.source, load.downloaded_bytes, load.total_bytes) == ("remote", 100, 100)
    events, _ = engine.events_after(status.run_id, 0)
    assert any(e.progress and e.progress.stage == LOADING_MODEL_STAGE for e in events)
    inventory = engine.snapshot()
    assert (models_of(inventory)["a"].on_disk, models_of(inventory)["a"].disk_bytes) == (True, 100)
    assert inventory.model_cache == ModelCacheInfo(path="/cache", capacity_bytes=1000, used_bytes=100)
    gone = run(engine, tmp_path, "2", "gone")
    assert (gone.reason, gone.message) == (
        Reason.MODEL_FAILED,
        "model gone: s3://models/gone: digest mismatch",
    )
    assert models_of(engine.snapshot())["gone"].state.value == "Failed"
    assert run(engine, tmp_path, "3", "a").phase is Phase.SUCCEEDED
    engine.shutdown()


def test_a_transient_failure_is_retried_with_a_growing_backoff_and_a_permanent_one_is_not(
    tmp_path: Path,
) -> None:
    files = RemoteFiles(broken={"tampered"}, late={"late": 3})
    retry = {"firstSeconds": 0.2, "maxSeconds": 0.3}
    engine, _ = make_engine(tmp_path, {"late": 1, "tampered": 1}, model_files=files, retry=retry)
    failed = run(engine, tmp_path, "1", "late")
    assert (failed.reason, failed.message) == (
        Reason.MODEL_FAILED,
        "model late: s3://models/late: no objects under it yet",
    )
    tampered = run(engine, tmp_path, "2", "tampered")
    assert tampered.reason is Reason.MODEL_FAILED
    models = models_of(engine.snapshot())
    assert models["late"].state.value == "Failed" and models["late"].retry_at is not None
    assert models["tampered"].state.value == "Failed" and models["tampered"].retry_at is None
    # Tried again after 0.2 s and 0.3 s (doubling, capped), and the fourth try works.
    wait_for(
        lambda: models_of(engine.snapshot())["late"], lambda m: m.state.value == "Available", 10, what="late"
    )
    first, second, third, fourth = files.calls["late"]
    assert second - first >= 0.2 and third - second >= 0.3 and fourth - third >= 0.3
    late = models_of(engine.snapshot())["late"]
    assert (late.message, late.retry_at, late.on_disk) == ("", None, True)
    assert run(engine, tmp_path, "3", "late").phase is Phase.SUCCEEDED
    # The permanent failure was never tried again and still refuses its jobs.
    assert len(files.calls["tampered"]) == 1
    with pytest.raises(Refusal, match="model tampered: s3://models/tampered: digest mismatch"):
        engine.submit(request(tmp_path, "4", "tampered"))
    engine.shutdown()


def test_a_run_cancelled_while_its_model_loads_frees_its_vram_and_the_load_completes(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"a": 2})
    release = loader.hold("a")
    status, _ = engine.submit(request(tmp_path, "1", "a", vram_gib=3))
    engine.cancel(status.run_id)
    assert finished(engine, status.run_id).phase is Phase.CANCELLED
    inventory = engine.snapshot()
    assert (inventory.gpus[0].jobs_bytes, resident(inventory)) == (0, {"a": "Loading"})
    release.set()
    wait_for(engine.snapshot, lambda i: resident(i) == {"a": "Loaded"}, 5, what="a loaded")
    assert engine.snapshot().gpus[0].evictable_bytes == 2 * GIB
    engine.shutdown()


def test_tasks_of_a_model_show_once_loaded_and_a_task_it_cannot_do_is_refused(tmp_path: Path) -> None:
    engine, loader = make_engine(tmp_path, {"a": 2})
    loader.tasks["a"] = frozenset({Task.VECTORIZE})
    wrong = request(tmp_path, "1", "a")
    assert models_of(engine.snapshot())["a"].tasks == []
    failed = finished(engine, engine.submit(wrong)[0].run_id)  # unknown until loaded
    assert (failed.reason, failed.message) == (
        Reason.UNSUPPORTED_TASK,
        "task: model a does not do text-to-image; it does vectorize",
    )
    assert models_of(engine.snapshot())["a"].tasks == [Task.VECTORIZE]
    with pytest.raises(Refusal) as refused:
        engine.submit(wrong.model_copy(update={"attempt": 2}))
    assert refused.value.reason is Reason.UNSUPPORTED_TASK
    engine.shutdown()


def test_metrics_count_loads_evictions_and_warm_hits(tmp_path: Path) -> None:
    engine, _ = make_engine(tmp_path, {"a": 4, "b": 4})
    for job, model in [("1", "a"), ("2", "a"), ("3", "b")]:
        run(engine, tmp_path, job, model)
    engine.metrics.watch_gpus(engine.gpu_readings)
    text = engine.metrics.exposition().decode()
    (gpu,) = engine.snapshot().gpus
    for line in [
        'gpufleet_worker_model_loads_total{model="a"} 1.0',
        'gpufleet_worker_model_loads_total{model="b"} 1.0',
        'gpufleet_worker_model_evictions_total{model="a"} 1.0',
        'gpufleet_worker_model_warm_hits_total{model="a"} 1.0',
        'gpufleet_worker_model_load_seconds_count{model="b"} 1.0',
        f'gpufleet_worker_model_resident{{gpu="{gpu.uuid}",model="b"}} 1.0',
        f'gpufleet_worker_gpu_memory_bytes{{gpu="{gpu.uuid}",kind="models",product="Simulated-GPU"}} '
        "4.294967296e+09",
    ]:
        assert line in text
    assert 'gpufleet_worker_model_resident{gpu="' + gpu.uuid + '",model="a"}' not in text
    engine.shutdown()
