"""The execution engine: a VRAM cache of models per GPU, admission by VRAM, runs on threads.

Models are loaded onto a GPU when the first run that needs them there is admitted, and stay
resident until evicted to make room for another (least recently used idle ones first, by
``modelcache``); ``preload`` models are loaded onto every GPU at start and never evicted. A
run admitted where its model is not resident waits in phase Running while the model loads
(one load per model and GPU at a time; runs admitted meanwhile wait on the same load).

A LoRA (a model with a ``base``) is an adapter attached to its base's pipeline on the same
GPU: loading it loads the base there first if it is not resident, and it holds only its own
VRAM. Every use of a LoRA is a use of its base too, so a base is never evicted while one of
its LoRAs runs or loads; evicting an idle base detaches its LoRAs.

A run reserves its VRAM when it is admitted and gives it back when it ends, whatever the
end (success, failure, out-of-memory, cancellation). Several runs share a GPU while their
reservations and the models there fit. Each run keeps an ordered log of its events, which
the server streams.
"""

from __future__ import annotations

import gc
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

from gpufleet.api.inputs import (
    MAX_PROGRESS_TEXT_CHARS,
    MAX_RESULT_TEXT_CHARS,
    MAX_SEED,
    ImageRef,
    Task,
    input_problems,
)

from .admission import Admitted, GpuBudget, choose_gpu
from .artifacts import ArtifactStore, UploadError
from .config import ModelSpec, WorkerConfig
from .errors import Refusal
from .fetch import FetchPolicy, InputFetchFailed, InputRefused, decode_image, fetch_bytes
from .inventory import GpuInventory, GpuReading
from .metrics import WorkerMetrics
from .modelcache import CachedModel
from .modelfiles import LocalModelFiles, ModelFiles, ModelSourceError
from .modelretry import backoff_seconds, is_transient
from .models import (
    AdapterHost,
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
    LOADING_MODEL_STAGE,
    TERMINAL_PHASES,
    EventName,
    GpuInfo,
    Inventory,
    JobEvent,
    JobStatus,
    ModelLoad,
    Phase,
    Progress,
    Reason,
    RunResult,
    SubmitRequest,
    TrainingProgress,
)
from .residency import Load, Model, ModelFailed, TaskNotDone, model_info, resident_models

log = logging.getLogger("gpufleet_worker")

Loader = Callable[[ModelSpec, str], Pipeline]

CANCEL_CHECK_SECONDS = 0.2  # how often a run waiting for a load looks for a cancel request
DOWNLOAD_EVENT_SECONDS = 0.5  # the least time between two download progress events of a run


@dataclass
class Run:
    request: SubmitRequest
    status: JobStatus
    seed: int
    device: str
    load: Load | None = None  # the load it waits for; None once its model is resident
    events: list[JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


def _now() -> datetime:
    return datetime.now(UTC)


def _without_text(event: JobEvent) -> JobEvent:
    """The event, or a copy without its progress text where it carries one."""
    if event.progress is None or event.progress.text is None:
        return event
    return event.model_copy(update={"progress": event.progress.model_copy(update={"text": None})})


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
        model_files: ModelFiles | None = None,
    ) -> None:
        """``devices`` maps each GPU uuid to the torch device its runs use ("cuda:0", "cpu");
        ``model_files`` gives the loader local files for each model (default: local sources)."""
        self.config = config
        self.instance = secrets.token_hex(16)  # runs live in this process: a restart starts none
        self.inventory = inventory
        self.devices = devices
        self.store = store
        self.metrics = metrics
        self.on_event = on_event
        self.model_files: ModelFiles = model_files or LocalModelFiles()
        self._loader = loader
        self._fetch_policy = FetchPolicy.from_config(config.image_fetch)
        self._lock = threading.RLock()
        self._budgets = {uuid: GpuBudget(uuid, total_bytes=self._total_memory(uuid)) for uuid in devices}
        self._models = {
            spec.name: Model(spec, frozenset(spec.tasks) if spec.tasks is not None else None)
            for spec in config.models
        }
        self._preloading = {spec.name for spec in config.models if spec.preload}
        self._runs: OrderedDict[str, Run] = OrderedDict()
        slots = len(devices) * config.max_jobs_per_gpu
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="run")
        # Only an admitted run (or a preload) starts a load: never more loads than job slots.
        self._loads = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="load")
        # Files are fetched concurrently but loaded one at a time: loaders import their
        # libraries on first use, and transformers' lazy imports are not thread-safe.
        self._loading = threading.Lock()
        self._retries: dict[str, threading.Timer] = {}  # failed model -> its next try (transient causes)
        self._closed = False

    def _total_memory(self, gpu_uuid: str) -> int:
        for reading in self.inventory.read():
            if reading.uuid == gpu_uuid:
                return reading.memory_total_bytes
        raise ValueError(f"GPU {gpu_uuid} is not in the inventory")

    # --- models ---------------------------------------------------------------------------

    def preload_models(self) -> None:
        """Loads every ``preload`` model onto every GPU, pinned there. Blocks; call on a thread."""
        # Bases first: a preloaded LoRA then attaches to its resident base.
        for name in sorted(self._preloading, key=lambda n: (self._models[n].spec.base is not None, n)):
            self._preload(self._models[name])
            with self._lock:
                self._preloading.discard(name)

    def _preload(self, model: Model) -> None:
        """Loads a ``preload`` model onto every GPU, pinned there, until a load fails. Blocks."""
        name = model.spec.name
        with self._lock:
            too_small = [b for b in self._budgets.values() if b.admittable_bytes < model.spec.vram]
            if too_small:
                self._fail(
                    model,
                    f"models[{name}].vram {model.spec.vram} bytes does not fit on GPU "
                    f"{too_small[0].uuid}, which has {too_small[0].admittable_bytes} free",
                )
        for budget in self._budgets.values():
            with self._lock:
                if model.failure is not None:
                    break
                load = self._start_load(model, budget, runs=0)
            self._load(model, load)

    @property
    def ready(self) -> bool:
        """Every preload model is loaded (or has failed, which its ModelInfo says)."""
        return not self._preloading

    def readiness_problem(self) -> str | None:
        with self._lock:
            waiting = sorted(self._preloading)
        return "preload models not loaded yet: " + ", ".join(waiting) if waiting else None

    def _start_load(self, model: Model, budget: GpuBudget, runs: int) -> Load:
        """Holds the model's VRAM on ``budget``'s GPU for a load (lock held); the caller runs
        ``_load``. The load counts as a use, so the model cannot be evicted mid-load. A LoRA
        whose base is not on the GPU starts the base's load there too."""
        name, base = model.spec.name, model.spec.base
        if base is not None and base not in budget.models:
            base_load = self._start_load(self._models[base], budget, runs=0)
            self._loads.submit(self._load, self._models[base], base_load)
        budget.models[name] = CachedModel(
            name, model.spec.vram, time.monotonic(), pinned=model.spec.preload, base=base
        )
        self._use(budget, name, runs + 1)
        budget.loading.add(name)
        load = model.loads_in_flight[budget.uuid] = Load(budget.uuid)
        return load

    def _use(self, budget: GpuBudget, name: str, uses: int) -> None:
        """Adds ``uses`` (negative: ends them) to ``name`` on ``budget``'s GPU and, for a LoRA,
        to its base (lock held); either may be gone after a failed load."""
        for each in (name, self._models[name].spec.base):
            cached = budget.models.get(each) if each is not None else None
            if cached is not None:
                budget.models[each] = replace(  # type: ignore[index]  # each is a name here
                    cached, in_use=cached.in_use + uses, last_used=time.monotonic()
                )

    def _base_pipeline(self, model: Model, gpu: str) -> AdapterHost:
        """The LoRA's base pipeline on ``gpu``, once its load there (if any) has ended."""
        base = self._models[model.spec.base or ""]
        with self._lock:
            load = base.loads_in_flight.get(gpu)
        if load is not None:
            load.done.wait()
        with self._lock:
            pipeline, failure = base.pipelines.get(gpu), base.failure
        if failure is not None:
            raise ModelFailed(f"its base model {base.spec.name} did not load: {failure}")
        if not isinstance(pipeline, AdapterHost):
            raise ModelFailed(
                f"models[{model.spec.name}].base: model {base.spec.name} takes no LoRA "
                "(only a diffusers pipeline does)"
            )
        return pipeline

    def _load(self, model: Model, load: Load) -> None:
        """Fetches the model's files and loads it onto the load's GPU; any failure marks the
        model Failed and fails the runs waiting for it."""
        name, budget = model.spec.name, self._budgets[load.gpu]
        started = time.monotonic()
        try:
            host = self._base_pipeline(model, load.gpu) if model.spec.base is not None else None
            local = self.model_files.local(
                model.spec, lambda done, total: self._downloaded(load, done, total)
            )
            device = self.devices[load.gpu]
            if host is not None:  # waits for runs on the base to pause: not under _loading
                pipeline = host.attach_lora(local)
            else:
                with self._loading:
                    if device.startswith("cuda"):
                        gc.collect()  # an evicted pipeline's weights may sit in reference cycles: free them
                    pipeline = self._loader(local, device)
            tasks = pipeline.tasks
            if model.spec.tasks is not None:
                if unsupported := set(model.spec.tasks) - tasks:
                    raise ValueError(
                        f"models[{name}].tasks: the model cannot do {', '.join(sorted(unsupported))}"
                    )
                tasks = frozenset(model.spec.tasks)
        except Exception as error:  # a model that cannot load must not stop the others
            log.exception("model %s failed to load onto GPU %s", name, load.gpu)
            with self._lock:
                cached = budget.models.pop(name, None)
                if cached is not None and model.spec.base is not None:
                    self._use(budget, model.spec.base, -cached.in_use)  # its uses were the base's too
                budget.loading.discard(name)
                model.loads_in_flight.pop(load.gpu, None)
                self._fail(model, _cause(error), retry=is_transient(error))
                load.error = model.failure
                load.done.set()
            return
        seconds = time.monotonic() - started
        with self._lock:
            model.pipelines[load.gpu], model.tasks = pipeline, tasks
            model.load_seconds, model.loads = seconds, model.loads + 1
            self._use(budget, name, -1)
            budget.loading.discard(name)
            model.loads_in_flight.pop(load.gpu, None)
            for run in load.waiting:
                run.load = None
                if run.status.model_load is not None:
                    run.status.model_load.loading = False
                    run.status.model_load.seconds = time.monotonic() - run.started
                self._append(
                    run, JobEvent(run_id=run.status.run_id, event=EventName.STATE, status=run.status)
                )
            load.done.set()
        self.metrics.model_loads.labels(model=name).inc()
        self.metrics.model_load_seconds.labels(model=name).observe(seconds)
        log.info("model %s loaded onto GPU %s in %.2fs", name, load.gpu, seconds)

    def _fail(self, model: Model, cause: str, retry: bool = False) -> None:
        """Marks the model Failed (lock held): requests for it are refused from now on. With
        ``retry`` (a transient cause) its source is tried again after the next backoff."""
        prefix = f"model {model.spec.name}: "
        # A ModelSourceError names the model already.
        model.failure = cause if cause.startswith(prefix) else prefix + cause
        log.error("%s", model.failure)
        if not retry or model.retry_at is not None or self._closed:
            return
        model.transient_failures += 1
        retry_config = self.config.model_retry
        delay = backoff_seconds(
            model.transient_failures, retry_config.first_seconds, retry_config.max_seconds
        )
        model.retry_at = time.monotonic() + delay
        timer = threading.Timer(delay, self._retry, (model,))
        timer.daemon = True
        self._retries[model.spec.name] = timer
        timer.start()
        log.warning(
            "model %s: trying its source again in %.1fs (failure %d in a row)",
            model.spec.name,
            delay,
            model.transient_failures,
        )

    def _retry(self, model: Model) -> None:
        """Tries a model that failed for a transient cause again: its files are fetched and
        checked (a download lands in the disk cache); once they are, the model is no longer
        Failed and loads when a job needs it (a ``preload`` model loads at once)."""
        name = model.spec.name
        with self._lock:
            if self._closed:
                return
        try:
            self.model_files.local(model.spec, lambda done, total: None)
        except Exception as error:
            log.warning("model %s: its source failed again", name, exc_info=True)
            with self._lock:
                model.retry_at = None
                self._retries.pop(name, None)
                self._fail(model, _cause(error), retry=is_transient(error))
            return
        with self._lock:
            model.failure, model.retry_at, model.transient_failures = None, None, 0
            self._retries.pop(name, None)
        log.info("model %s: its source works again", name)
        if model.spec.preload:
            self._preload(model)

    def _downloaded(self, load: Load, done: int, total: int | None) -> None:
        """Download progress of a load, shown on the runs waiting for it."""
        with self._lock:
            now = time.monotonic()
            if now - load.last_event < DOWNLOAD_EVENT_SECONDS and done != total:
                return
            load.last_event = now
            for run in load.waiting:
                if run.status.model_load is not None:
                    run.status.model_load.downloaded_bytes, run.status.model_load.total_bytes = done, total
                self._progress_locked(
                    run, run.status.progress.step, run.status.progress.total_steps, LOADING_MODEL_STAGE
                )

    def _evict(self, budget: GpuBudget, name: str) -> None:
        """Drops an idle model from a GPU (lock held); its memory is freed with its pipeline.
        A LoRA is detached from its base; a base takes its LoRAs with it."""
        del budget.models[name]
        model = self._models[name]
        model.pipelines.pop(budget.uuid, None)
        if model.spec.base is not None:
            host = self._models[model.spec.base].pipelines.get(budget.uuid)
            if isinstance(host, AdapterHost):
                host.detach_lora(name)
        for lora in [m.spec.name for m in self._models.values() if m.spec.base == name]:
            if lora in budget.models:
                self._evict(budget, lora)
        model.evictions += 1
        self.metrics.model_evictions.labels(model=name).inc()
        log.info("model %s evicted from GPU %s", name, budget.uuid)

    # --- runs -----------------------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> tuple[JobStatus, bool]:
        """Admits a run and starts it; returns its status and whether it was created now.

        The same (job id, attempt) returns the existing run and starts nothing.
        """
        with self._lock:
            existing = self._runs.get(request.run_id)
            if existing is not None and existing.request.job_uid != request.job_uid:
                # An earlier job of that name, deleted since: its ended run makes way.
                if existing.status.phase not in TERMINAL_PHASES:
                    raise Refusal(
                        Reason.SPEC_MISMATCH,
                        f"run {request.run_id} of an earlier job of that name (uid "
                        f"{existing.request.job_uid}) has not ended yet",
                    )
                del self._runs[request.run_id]
                existing = None
            if existing is not None:
                if existing.request != request:
                    raise Refusal(
                        Reason.SPEC_MISMATCH,
                        f"run {request.run_id} already exists with a different request; a new "
                        "request needs a new attempt number",
                    )
                return existing.status.model_copy(deep=True), False
            model = self._check_request(request)
            base = model.spec.base
            decision = choose_gpu(
                list(self._budgets.values()),
                model.spec.name,
                model.spec.vram,
                request.vram_bytes,
                self.config.max_jobs_per_gpu,
                base=base,
                base_bytes=self._models[base].spec.vram if base is not None else 0,
            )
            if not isinstance(decision, Admitted):
                self.metrics.refusals.labels(reason=decision.reason).inc()
                raise Refusal(
                    Reason(decision.reason),
                    decision.message,
                    asked_bytes=decision.asked_bytes,
                    free_bytes=decision.free_bytes,
                )
            budget = self._budgets[decision.gpu_uuid]
            for name in decision.evict:
                self._evict(budget, name)
            budget.reservations[request.run_id] = request.vram_bytes
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
                    job_uid=request.job_uid,
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
                    model_load=self._model_load(model, warm=decision.resident),
                    vram_reserved_bytes=request.vram_bytes,
                    created_at=_now(),
                ),
            )
            self._hold_model(model, budget, run, decision)
            self._runs[request.run_id] = run
            log.info("run %s admitted on %s", request.run_id, decision.gpu_uuid)
            self._forget_old_runs()
            self._append(run, JobEvent(run_id=run.status.run_id, event=EventName.STATE, status=run.status))
            if run.load is not None:
                self._progress_locked(run, 0, run.status.progress.total_steps, LOADING_MODEL_STAGE)
            self.metrics.running_jobs.inc()
            snapshot = run.status.model_copy(deep=True)
        self._pool.submit(self._execute, run, model)
        return snapshot, True

    def _model_load(self, model: Model, warm: bool) -> ModelLoad:
        if warm:
            return ModelLoad(warm=True, source="resident", seconds=0)
        on_disk = self.model_files.on_disk_bytes(model.spec) is not None
        return ModelLoad(warm=False, source="disk" if on_disk else "remote", loading=True)

    def _hold_model(self, model: Model, budget: GpuBudget, run: Run, decision: Admitted) -> None:
        """Marks the model in use by ``run`` on its GPU (lock held), starting its load there
        when it is neither resident nor loading."""
        name = model.spec.name
        if decision.resident or decision.loading:
            self._use(budget, name, 1)
            if decision.resident:
                model.warm_hits += 1
                self.metrics.model_warm_hits.labels(model=name).inc()
                return
            run.load = model.loads_in_flight[budget.uuid]
        else:
            run.load = self._start_load(model, budget, runs=1)
            self._loads.submit(self._load, model, run.load)
        run.load.waiting.append(run)

    def _release_model(self, run: Run) -> None:
        """The run no longer needs its model (lock held): it becomes evictable once idle."""
        budget = self._budgets[run.status.gpu]
        if run.request.model in budget.models:  # gone only when its load failed
            self._use(budget, run.request.model, -1)

    def _check_request(self, request: SubmitRequest) -> Model:
        if not self.ready:
            raise Refusal(Reason.NOT_READY, self.readiness_problem() or "not ready")
        model = self._models.get(request.model)
        if model is None:
            raise Refusal(
                Reason.UNKNOWN_MODEL,
                f"model: {request.model!r} is not served here; served: {', '.join(sorted(self._models))}",
            )
        if model.failure is not None:
            raise Refusal(Reason.MODEL_FAILED, model.failure)
        base = self._models[model.spec.base] if model.spec.base is not None else None
        if base is not None and base.failure is not None:
            raise Refusal(Reason.MODEL_FAILED, f"model {model.spec.name}: its base {base.failure}")
        if model.tasks is not None and request.task not in model.tasks:
            raise Refusal(Reason.UNSUPPORTED_TASK, self._task_problem(model, request.task))
        if problems := input_problems(request.task, request.input):
            raise Refusal(Reason.INVALID_REQUEST, "; ".join(problems))
        if problem := self.store.output_problem(request.output_uri):
            raise Refusal(Reason.UNSUPPORTED_OUTPUT, problem)
        return model

    @staticmethod
    def _task_problem(model: Model, task: Task) -> str:
        return (
            f"task: model {model.spec.name} does not do {task.value}; it does "
            f"{', '.join(sorted(model.tasks or ()))}"
        )

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
        text: str | None = None,
    ) -> None:
        if run.cancel_requested.is_set():
            raise Cancelled()
        with self._lock:
            self._progress_locked(run, step, total, stage, training, text)

    def _progress_locked(
        self,
        run: Run,
        step: int,
        total: int,
        stage: str | None,
        training: TrainingProgress | None = None,
        text: str | None = None,
    ) -> None:
        progress = Progress(
            step=step,
            total_steps=total,
            percent=min(100, step * 100 // total) if total else 0,
            unit=run.status.progress.unit,
            stage=stage,
            training=training,
            text=None if text is None else text[-MAX_PROGRESS_TEXT_CHARS:],
        )
        run.status.progress = progress
        self._append(run, JobEvent(run_id=run.status.run_id, event=EventName.PROGRESS, progress=progress))

    def _await_model(self, run: Run, model: Model) -> Pipeline:
        """The run's model on its GPU, after waiting for its load where it was not resident."""
        load = run.load
        if load is not None:
            while not load.done.wait(CANCEL_CHECK_SECONDS):
                if run.cancel_requested.is_set():
                    raise Cancelled()
            if load.error is not None:
                raise ModelFailed(load.error)
        with self._lock:
            if model.tasks is not None and run.request.task not in model.tasks:
                raise TaskNotDone(self._task_problem(model, run.request.task))
            return model.pipelines[run.status.gpu]

    def _execute(self, run: Run, model: Model) -> None:
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
            outputs = self._generate(run, self._await_model(run, model), job)
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
        except ModelFailed as error:
            reason, message = Reason.MODEL_FAILED, str(error)
        except TaskNotDone as error:
            reason, message = Reason.UNSUPPORTED_TASK, str(error)
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
            step: int,
            total: int,
            stage: str | None = None,
            training: TrainingProgress | None = None,
            text: str | None = None,
        ) -> None:
            self._progress(run, step, total, stage, training, text)

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
            self._budgets[run.status.gpu].reservations.pop(run.status.run_id, None)
            self._release_model(run)
            if run.load is not None:  # ended before its model was loaded
                run.load.waiting.remove(run)
                run.load = None
                if run.status.model_load is not None:
                    run.status.model_load.loading = False
            status = run.status
            status.phase, status.reason, status.message = phase, reason, message
            status.artifacts = artifacts
            status.result = result
            status.vram_reserved_bytes = 0
            status.finished_at = _now()
            # An ended run keeps its generated text in its final status only: the text in
            # every token's progress event would otherwise make its kept log large.
            run.events = [_without_text(event) for event in run.events]
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
                copy = replace(
                    budget,
                    models=dict(budget.models),
                    loading=set(budget.loading),
                    reservations=dict(budget.reservations),
                )
                pairs.append((reading, copy))
            return pairs

    def snapshot(self) -> Inventory:
        # The disk and the clock are read before the lock: neither needs it.
        on_disk = {name: self.model_files.on_disk_bytes(m.spec) for name, m in self._models.items()}
        cache_info = self.model_files.cache_info()
        wall, monotonic = _now(), time.monotonic()
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
                models_bytes=budget.models_bytes,
                jobs_bytes=budget.jobs_bytes,
                evictable_bytes=budget.evictable_bytes,
                models=resident_models(budget, wall, monotonic),
            )
            for reading, budget in self.gpu_readings()
        ]
        with self._lock:
            models = [
                model_info(m, self._budgets.values(), on_disk[m.spec.name], wall, monotonic)
                for m in self._models.values()
            ]
            jobs = [
                r.status.model_copy(deep=True)
                for r in self._runs.values()
                if r.status.phase not in TERMINAL_PHASES
            ]
        return Inventory(
            worker=self.config.name,
            instance=self.instance,
            ready=self.ready,
            max_jobs_per_gpu=self.config.max_jobs_per_gpu,
            gpus=gpus,
            models=models,
            jobs=jobs,
            model_cache=cache_info,
        )

    def shutdown(self) -> None:
        """Cancels every run and waits for their threads, so reservations are all returned."""
        with self._lock:
            self._closed = True
            for timer in self._retries.values():
                timer.cancel()
            for run in self._runs.values():
                run.cancel_requested.set()
        self._pool.shutdown(wait=True)
        self._loads.shutdown(wait=True)
        self.inventory.close()


def _cause(error: Exception) -> str:
    """A model failure's cause as its message says it (a ModelSourceError's names the model)."""
    known = isinstance(error, ModelSourceError | ModelFailed)
    return str(error) if known else f"{type(error).__name__}: {error}"
