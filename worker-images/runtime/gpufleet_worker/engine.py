"""The execution engine: loads models once, admits runs by VRAM, runs them on threads.

A run reserves its VRAM when it is admitted and gives it back when it ends, whatever the
end (success, failure, out-of-memory, cancellation). Several runs share a GPU while their
reservations fit. Each run keeps an ordered log of its events, which the server streams.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import torch
from PIL import Image

from gpufleet.api.inputs import MAX_RESULT_TEXT_CHARS, MAX_SEED, ImageRef, input_problems

from .admission import Admitted, GpuBudget, choose_gpu
from .artifacts import ArtifactStore, UploadError
from .config import ModelSpec, WorkerConfig
from .errors import Refusal
from .fetch import FetchPolicy, InputFetchFailed, InputRefused, decode_image, fetch_bytes
from .inventory import GpuInventory, GpuReading
from .metrics import WorkerMetrics
from .models import (
    Cancelled,
    Generation,
    Outputs,
    Pipeline,
    TrainingDiverged,
    Workspace,
    progress_unit,
    total_steps,
)
from .outputs import InvalidOutput, check_output
from .protocol import (
    TERMINAL_PHASES,
    EventName,
    GpuInfo,
    Inventory,
    JobEvent,
    JobStatus,
    ModelInfo,
    ModelState,
    Phase,
    Progress,
    Reason,
    RunResult,
    SubmitRequest,
    TrainingProgress,
)

log = logging.getLogger("gpufleet_worker")

Loader = Callable[[ModelSpec, str], Pipeline]


@dataclass
class LoadedModel:
    spec: ModelSpec
    state: ModelState = ModelState.LOADING
    tasks: frozenset = frozenset()
    pipelines: dict[str, Pipeline] = field(default_factory=dict)  # device -> pipeline
    load_seconds: float | None = None
    message: str = ""


@dataclass
class Run:
    request: SubmitRequest
    status: JobStatus
    seed: int
    device: str
    events: list[JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


def _now() -> datetime:
    return datetime.now(UTC)


class Engine:
    def __init__(
        self,
        config: WorkerConfig,
        inventory: GpuInventory,
        devices: dict[str, str],
        store: ArtifactStore,
        metrics: WorkerMetrics,
        loader: Loader,
        on_event: Callable[[str], None] = lambda run_id: None,
    ) -> None:
        """``devices`` maps each GPU uuid to the torch device its runs use ("cuda:0", "cpu")."""
        self.config = config
        self.inventory = inventory
        self.devices = devices
        self.store = store
        self.metrics = metrics
        self.on_event = on_event
        self._loader = loader
        self._fetch_policy = FetchPolicy.from_config(config.image_fetch)
        self._lock = threading.RLock()
        self._budgets = {uuid: GpuBudget(uuid, total_bytes=self._total_memory(uuid)) for uuid in devices}
        self._models = {spec.name: LoadedModel(spec) for spec in config.models}
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._pool = ThreadPoolExecutor(
            max_workers=len(devices) * config.max_jobs_per_gpu, thread_name_prefix="run"
        )

    def _total_memory(self, gpu_uuid: str) -> int:
        for reading in self.inventory.read():
            if reading.uuid == gpu_uuid:
                return reading.memory_total_bytes
        raise ValueError(f"GPU {gpu_uuid} is not in the inventory")

    # --- models ---------------------------------------------------------------------------

    def load_models(self) -> None:
        """Loads every model onto every GPU, reserving its VRAM there. Blocks; call on a thread."""
        for model in self._models.values():
            spec = model.spec
            started = time.monotonic()
            try:
                too_small = [b.uuid for b in self._budgets.values() if b.admittable_bytes < spec.vram]
                if too_small:
                    raise ValueError(
                        f"models[{spec.name}].vram {spec.vram} bytes does not fit on GPU "
                        f"{too_small[0]}, which has {self._budgets[too_small[0]].admittable_bytes} free"
                    )
                pipelines: dict[str, Pipeline] = {}
                for device in sorted(set(self.devices.values())):
                    pipelines[device] = self._loader(spec, device)
                tasks = next(iter(pipelines.values())).tasks
                if spec.tasks is not None:
                    if unsupported := set(spec.tasks) - tasks:
                        raise ValueError(
                            f"models[{spec.name}].tasks: the model cannot do {', '.join(sorted(unsupported))}"
                        )
                    tasks = frozenset(spec.tasks)
            except Exception as error:  # a model that cannot load must not stop the others
                log.exception("model %s failed to load", spec.name)
                with self._lock:
                    model.state, model.message = ModelState.FAILED, str(error)
                continue
            seconds = time.monotonic() - started
            with self._lock:
                for budget in self._budgets.values():
                    budget.resident_bytes += spec.vram
                model.pipelines, model.tasks = pipelines, tasks
                model.state, model.load_seconds = ModelState.LOADED, seconds
            self.metrics.model_load_seconds.labels(model=spec.name).set(seconds)
            log.info("model %s loaded in %.2fs", spec.name, seconds)

    @property
    def ready(self) -> bool:
        return all(m.state is ModelState.LOADED for m in self._models.values())

    def readiness_problem(self) -> str | None:
        with self._lock:
            waiting = [
                f"{m.spec.name}: {m.state.value}{' (' + m.message + ')' if m.message else ''}"
                for m in self._models.values()
                if m.state is not ModelState.LOADED
            ]
        return "models not loaded: " + "; ".join(waiting) if waiting else None

    # --- runs -----------------------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> tuple[JobStatus, bool]:
        """Admits a run and starts it; returns its status and whether it was created now.

        The same (job id, attempt) returns the existing run and starts nothing.
        """
        with self._lock:
            existing = self._runs.get(request.run_id)
            if existing is not None:
                if existing.request != request:
                    raise Refusal(
                        Reason.SPEC_MISMATCH,
                        f"run {request.run_id} already exists with a different request; a new "
                        "request needs a new attempt number",
                    )
                return existing.status.model_copy(deep=True), False
            model = self._check_request(request)
            decision = choose_gpu(
                list(self._budgets.values()), request.vram_bytes, self.config.max_jobs_per_gpu
            )
            if not isinstance(decision, Admitted):
                self.metrics.refusals.labels(reason=decision.reason).inc()
                raise Refusal(
                    Reason(decision.reason),
                    decision.message,
                    asked_bytes=decision.asked_bytes,
                    free_bytes=decision.free_bytes,
                )
            self._budgets[decision.gpu_uuid].reservations[request.run_id] = request.vram_bytes
            seed = request.input.seed
            if seed is None:
                seed = secrets.randbelow(MAX_SEED + 1)
            run = Run(
                request=request,
                seed=seed,
                device=self.devices[decision.gpu_uuid],
                status=JobStatus(
                    run_id=request.run_id,
                    job_id=request.job_id,
                    attempt=request.attempt,
                    task=request.task,
                    model=request.model,
                    seed=seed,
                    phase=Phase.RUNNING,
                    progress=Progress(
                        step=0,
                        total_steps=total_steps(Generation(request.task, request.input, seed)),
                        percent=0,
                        unit=progress_unit(request.task),
                    ),
                    gpu=decision.gpu_uuid,
                    vram_reserved_bytes=request.vram_bytes,
                    created_at=_now(),
                ),
            )
            self._runs[request.run_id] = run
            self._forget_old_runs()
            self._append(run, JobEvent(run_id=run.status.run_id, event=EventName.STATE, status=run.status))
            self.metrics.running_jobs.inc()
            pipeline = model.pipelines[run.device]
            snapshot = run.status.model_copy(deep=True)
        self._pool.submit(self._execute, run, pipeline)
        return snapshot, True

    def _check_request(self, request: SubmitRequest) -> LoadedModel:
        if not self.ready:
            raise Refusal(Reason.NOT_READY, self.readiness_problem() or "not ready")
        model = self._models.get(request.model)
        if model is None:
            raise Refusal(
                Reason.UNKNOWN_MODEL,
                f"model: {request.model!r} is not served here; served: {', '.join(sorted(self._models))}",
            )
        if request.task not in model.tasks:
            raise Refusal(
                Reason.UNSUPPORTED_TASK,
                f"task: model {request.model} does not do {request.task.value}; it does "
                f"{', '.join(sorted(model.tasks))}",
            )
        if problems := input_problems(request.task, request.input):
            raise Refusal(Reason.INVALID_REQUEST, "; ".join(problems))
        if problem := self.store.output_problem(request.output_uri):
            raise Refusal(Reason.UNSUPPORTED_OUTPUT, problem)
        return model

    def _forget_old_runs(self) -> None:
        finished = [k for k, r in self._runs.items() if r.status.phase in TERMINAL_PHASES]
        for key in finished[: max(0, len(finished) - self.config.keep_finished_jobs)]:
            del self._runs[key]

    def _append(self, run: Run, event: JobEvent) -> None:
        """Adds an event to a run's log (lock held) and wakes its listeners."""
        run.events.append(event.model_copy(deep=True))
        self.on_event(run.status.run_id)

    def _progress(
        self,
        run: Run,
        step: int,
        total: int,
        stage: str | None = None,
        training: TrainingProgress | None = None,
    ) -> None:
        if run.cancel_requested.is_set():
            raise Cancelled()
        with self._lock:
            progress = Progress(
                step=step,
                total_steps=total,
                percent=min(100, step * 100 // total),
                unit=run.status.progress.unit,
                stage=stage,
                training=training,
            )
            run.status.progress = progress
            self._append(run, JobEvent(run_id=run.status.run_id, event=EventName.PROGRESS, progress=progress))

    def _execute(self, run: Run, pipeline: Pipeline) -> None:
        request = run.request
        phase, reason, message, artifacts = Phase.FAILED, Reason.INTERNAL_ERROR, "", []
        result = None
        try:
            extra = request.input.caption.extra_images if request.input.caption else []
            job = Generation(
                task=request.task,
                input=request.input,
                seed=run.seed,
                image=self._input_image(request.input.image, "input.image"),
                mask=self._input_image(request.input.mask, "input.mask"),
                extra_images=tuple(
                    self._fetch_image(ref, f"input.caption.extraImages[{i}]") for i, ref in enumerate(extra)
                ),
                workspace=Workspace(request.output_uri, self.store),
            )
            outputs = self._generate(run, pipeline, job)
            if run.cancel_requested.is_set():
                raise Cancelled()
            artifacts.extend(outputs.written)
            for file in outputs.files:
                check_output(file)  # every file before any is written: nothing half-recorded
            for file in outputs.files:
                artifacts.append(self.store.put(request.output_uri, file.name, file.data, file.media_type))
            if outputs.text is not None:
                result = RunResult(
                    text=outputs.text[:MAX_RESULT_TEXT_CHARS],
                    truncated=len(outputs.text) > MAX_RESULT_TEXT_CHARS,
                )
            phase, reason = Phase.SUCCEEDED, Reason.COMPLETED
            message = f"{outputs.summary} in {time.monotonic() - run.started:.1f}s on {run.status.gpu}"
        except Cancelled:
            phase, reason, message = Phase.CANCELLED, Reason.CANCELLED, "cancelled on request"
        except torch.cuda.OutOfMemoryError as error:
            reason, message = Reason.OUT_OF_MEMORY, f"GPU out of memory: {error}"
        except InputRefused as error:
            reason, message = Reason.INPUT_REFUSED, str(error)
        except InputFetchFailed as error:
            reason, message = Reason.INPUT_FETCH_FAILED, str(error)
        except UploadError as error:
            reason, message = Reason.UPLOAD_FAILED, str(error)
        except TrainingDiverged as error:
            reason, message = Reason.TRAINING_DIVERGED, str(error)
        except InvalidOutput as error:
            log.error("run %s made an invalid artifact: %s", request.run_id, error)
            reason, message = Reason.INVALID_OUTPUT, str(error)
        except Exception as error:  # any other failure ends this run, never the worker
            log.exception("run %s failed", request.run_id)
            message = f"{type(error).__name__}: {error}"
        finally:
            self._finish(run, phase, reason, message, artifacts, result)

    def _generate(self, run: Run, pipeline: Pipeline, job: Generation) -> Outputs:
        def on_step(
            step: int, total: int, stage: str | None = None, training: TrainingProgress | None = None
        ) -> None:
            self._progress(run, step, total, stage, training)

        if run.device.startswith("cuda"):
            # A stream per run lets concurrent runs on one GPU overlap their kernels.
            device = torch.device(run.device)
            with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
                try:
                    outputs = pipeline.run(job, on_step)
                    torch.cuda.current_stream().synchronize()
                    return outputs
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()  # give the failed run's blocks back to the GPU
                    raise
        return pipeline.run(job, on_step)

    def _input_image(self, ref: ImageRef | None, what: str) -> Image.Image | None:
        return None if ref is None else self._fetch_image(ref, what)

    def _fetch_image(self, ref: ImageRef, what: str) -> Image.Image:
        if ref.url is not None:
            return decode_image(fetch_bytes(ref.url, self._fetch_policy), what)
        assert ref.object is not None  # ImageRef holds exactly one of url and object
        try:
            data = self.store.read_object(ref.object, self._fetch_policy.max_bytes)
        except Exception as error:  # boto3's many error types all mean "could not read"
            raise InputFetchFailed(f"{what}: reading {ref.object}: {error}") from error
        return decode_image(data, what)

    def _finish(
        self,
        run: Run,
        phase: Phase,
        reason: Reason,
        message: str,
        artifacts: list,
        result: RunResult | None = None,
    ) -> None:
        with self._lock:
            budget = self._budgets[run.status.gpu]
            budget.reservations.pop(run.status.run_id, None)
            status = run.status
            status.phase, status.reason, status.message = phase, reason, message
            status.artifacts = artifacts
            status.result = result
            status.vram_reserved_bytes = 0
            status.finished_at = _now()
            self._append(run, JobEvent(run_id=status.run_id, event=EventName.RESULT, status=status))
        seconds = time.monotonic() - run.started
        self.metrics.running_jobs.dec()
        self.metrics.jobs.labels(model=status.model, phase=phase.value, reason=reason.value).inc()
        self.metrics.job_seconds.labels(model=status.model, phase=phase.value).observe(seconds)
        log.info("run %s %s (%s) after %.2fs %s", status.run_id, phase.value, reason.value, seconds, message)

    def get(self, run_id: str) -> JobStatus:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise Refusal(Reason.NOT_FOUND, f"no run {run_id!r} on this worker")
            return run.status.model_copy(deep=True)

    def runs(self) -> list[JobStatus]:
        with self._lock:
            return [run.status.model_copy(deep=True) for run in self._runs.values()]

    def cancel(self, run_id: str) -> JobStatus:
        """Asks a run to stop at its next step; a finished run is returned unchanged."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise Refusal(Reason.NOT_FOUND, f"no run {run_id!r} on this worker")
            run.cancel_requested.set()
            return run.status.model_copy(deep=True)

    def events_after(self, run_id: str, seen: int) -> tuple[list[JobEvent], bool]:
        """A run's events after the first ``seen``, and whether its log is complete."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise Refusal(Reason.NOT_FOUND, f"no run {run_id!r} on this worker")
            return run.events[seen:], run.status.phase in TERMINAL_PHASES

    # --- inventory ------------------------------------------------------------------------

    def gpu_readings(self) -> list[tuple[GpuReading, GpuBudget]]:
        """Each GPU's reading beside a copy of its budget. A simulated GPU shows the worker's
        reservations as its used memory."""
        readings = self.inventory.read()
        with self._lock:
            pairs = []
            for reading in readings:
                budget = self._budgets.get(reading.uuid)
                if budget is None:
                    continue
                if reading.simulated:
                    used = min(budget.reserved_bytes, reading.memory_total_bytes)
                    reading = replace(
                        reading,
                        memory_used_bytes=used,
                        memory_free_bytes=reading.memory_total_bytes - used,
                    )
                copy = replace(budget, reservations=dict(budget.reservations))
                pairs.append((reading, copy))
            return pairs

    def snapshot(self) -> Inventory:
        gpus = [
            GpuInfo(
                index=reading.index,
                uuid=reading.uuid,
                product=reading.product,
                simulated=reading.simulated,
                memory_total_bytes=reading.memory_total_bytes,
                memory_used_bytes=reading.memory_used_bytes,
                memory_free_bytes=reading.memory_free_bytes,
                utilization_percent=reading.utilization_percent,
                reserved_bytes=budget.reserved_bytes,
                admittable_bytes=budget.admittable_bytes,
                running_jobs=len(budget.reservations),
            )
            for reading, budget in self.gpu_readings()
        ]
        with self._lock:
            models = [
                ModelInfo(
                    name=m.spec.name,
                    source=m.spec.source,
                    vram_bytes=m.spec.vram,
                    tasks=sorted(m.tasks),
                    state=m.state,
                    load_seconds=m.load_seconds,
                    message=m.message,
                )
                for m in self._models.values()
            ]
            jobs = [
                r.status.model_copy(deep=True)
                for r in self._runs.values()
                if r.status.phase not in TERMINAL_PHASES
            ]
        return Inventory(
            worker=self.config.name,
            ready=self.ready,
            max_jobs_per_gpu=self.config.max_jobs_per_gpu,
            gpus=gpus,
            models=models,
            jobs=jobs,
        )

    def shutdown(self) -> None:
        """Cancels every run and waits for their threads, so reservations are all returned."""
        with self._lock:
            for run in self._runs.values():
                run.cancel_requested.set()
        self._pool.shutdown(wait=True)
        self.inventory.close()
