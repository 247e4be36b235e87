"""The worker protocol: every route, header, request, response and event of the worker API.

This module is the single source of truth for both sides: the worker serves these models
and the operator imports them to talk to workers. It depends on pydantic and the shared job
input contract only (no torch, no web framework), so the operator can import it cheaply.

Auth: every route except ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``
with the pool's token; anything else gets 401.

A job attempt on a worker is a *run*. It is named by ``run_id(job_id, attempt)``, which the
operator can compute without asking, and submitting the same (job id, attempt) again returns
the existing run instead of starting a second one. A job deleted and made anew under the same
name is another job (another ``job_uid``): its submit replaces an ended run of the earlier
one, and is refused (SpecMismatch) while that run has not ended.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from gpufleet.api.inputs import (
    MAX_PROGRESS_TEXT_CHARS,
    MAX_RESULT_TEXT_CHARS,
    MAX_URL_CHARS,
    CamelModel,
    JobInput,
    Task,
)
from gpufleet.api.outputs import S3_BUCKET_PATTERN

# --- auth -----------------------------------------------------------------------------------

AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"


def auth_header_value(token: str) -> str:
    """The value of the ``Authorization`` header that carries ``token``."""
    return f"{AUTH_SCHEME} {token}"


# --- routes ---------------------------------------------------------------------------------

API_PREFIX = "/v1"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
INVENTORY = f"{API_PREFIX}/inventory"
JOBS = f"{API_PREFIX}/jobs"
JOB = f"{API_PREFIX}/jobs/{{run_id}}"
JOB_CANCEL = f"{API_PREFIX}/jobs/{{run_id}}/cancel"
JOB_EVENTS = f"{API_PREFIX}/jobs/{{run_id}}/events"

# Kubernetes namespaces and object names never contain "_", so it separates the parts of a
# run id unambiguously; a uid (lowercase hex and "-") fits the same pattern as a name.
_DNS_NAME = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
JOB_ID_PATTERN = rf"^{_DNS_NAME}(/{_DNS_NAME})?$"
RUN_ID_PATTERN = rf"^{_DNS_NAME}(_{_DNS_NAME})?_[0-9]{{1,4}}$"
MAX_ATTEMPT = 9999


def run_id(job_id: str, attempt: int) -> str:
    """The worker's name for one attempt of a job: URL-safe, stable, unique per (id, attempt)."""
    return f"{job_id.replace('/', '_')}_{attempt}"


def job_path(route: str, run: str) -> str:
    """A concrete path, for example ``job_path(JOB_EVENTS, run_id("studio/a", 1))``."""
    return route.format(run_id=run)


# --- server-sent events ---------------------------------------------------------------------


class EventName(StrEnum):
    """The ``event:`` field of the job event stream (``GET /v1/jobs/{run_id}/events``).

    The stream replays a run's events from its start (or after ``Last-Event-ID``), then
    follows it live; every event carries an increasing ``id:``. ``result`` is always the last
    event and the server closes the stream after it.
    """

    STATE = "state"  # data: JobEvent with the run's JobStatus (phase changes)
    PROGRESS = "progress"  # data: JobEvent with Progress
    RESULT = "result"  # data: JobEvent with the final JobStatus


SSE_MEDIA_TYPE = "text/event-stream"

# --- values ---------------------------------------------------------------------------------


class Phase(StrEnum):
    """Where a run is. A run is admitted straight into Running: there is no queue on a worker."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})


class Reason(StrEnum):
    """Why a run ended (``JobStatus.reason``), or why a request was refused (``ErrorResponse``)."""

    # outcomes of a run
    COMPLETED = "Completed"
    CANCELLED = "Cancelled"
    OUT_OF_MEMORY = "OutOfMemory"
    # the input broke a rule only the worker can check: the fetch policy (SSRF, scheme), or
    # prompts outside the image
    INPUT_REFUSED = "InputRefused"
    INPUT_FETCH_FAILED = "InputFetchFailed"  # network error, too large, not an image
    UPLOAD_FAILED = "UploadFailed"
    INVALID_OUTPUT = "InvalidOutput"  # an artifact failed its check (unparsable, wrong size)
    TRAINING_DIVERGED = "TrainingDiverged"  # a training loss became NaN or infinite
    INTERNAL_ERROR = "InternalError"
    # refusals of a request
    UNAUTHORIZED = "Unauthorized"
    INVALID_REQUEST = "InvalidRequest"
    REQUEST_TOO_LARGE = "RequestTooLarge"
    UNKNOWN_MODEL = "UnknownModel"
    # the model's source cannot be used (missing, unreachable, digest mismatch): a run that
    # needs it fails with this reason, and a request for it is refused with it
    MODEL_FAILED = "ModelFailed"
    UNSUPPORTED_TASK = "UnsupportedTask"
    UNSUPPORTED_OUTPUT = "UnsupportedOutput"
    INSUFFICIENT_VRAM = "InsufficientVRAM"
    TOO_MANY_JOBS = "TooManyJobs"
    SPEC_MISMATCH = "SpecMismatch"
    NOT_FOUND = "NotFound"
    NOT_READY = "NotReady"


# --- requests -------------------------------------------------------------------------------

OUTPUT_URI_PATTERN = rf"^(s3://{S3_BUCKET_PATTERN}/|file:///)(.*/)?$"


class SubmitRequest(CamelModel):
    """``POST /v1/jobs``: start one attempt of a job on this worker."""

    job_id: str = Field(
        max_length=507,
        pattern=JOB_ID_PATTERN,
        description="The GenerationJob as namespace/name, or its uid.",
    )
    attempt: int = Field(ge=1, le=MAX_ATTEMPT, description="Attempt number, from 1.")
    job_uid: str | None = Field(
        default=None,
        max_length=64,
        description="The job object's uid: a job made anew under the same name is another job.",
    )
    task: Task
    model: str = Field(min_length=1, max_length=253, description="A model this worker serves.")
    input: JobInput
    vram_bytes: int = Field(
        gt=0,
        le=2**50,
        description=(
            "VRAM to reserve for this run on top of the model's resident weights (latents, "
            "activations). The run is refused when no GPU has this much free."
        ),
    )
    output_uri: str = Field(
        max_length=MAX_URL_CHARS,
        pattern=OUTPUT_URI_PATTERN,
        description=(
            "Prefix the artifacts are written under, ending in '/': s3://bucket/prefix/ or, "
            "where the worker has a local output root, file:///path/. Artifacts: "
            "image-<i>.png (image tasks), mask-<object>-<k>.png and masks.json (segment), "
            "image.svg (vectorize), answer.txt (caption), pytorch_lora_weights.safetensors, "
            "sample-<step>-<i>.png and checkpoints/step-<n>/ (train). Refused with UnsupportedOutput "
            "before the run starts when it can never be written: a bucket that is an IP "
            "address or holds '..', '.-' or '-.', a '.' or '..' path segment."
        ),
    )

    @property
    def run_id(self) -> str:
        return run_id(self.job_id, self.attempt)


# --- responses ------------------------------------------------------------------------------


ProgressUnit = Literal["steps", "tokens", "stages"]
# Progress.stage of a run that waits for its model to load onto its GPU (step 0).
LOADING_MODEL_STAGE = "LoadingModel"


class Artifact(CamelModel):
    name: str = Field(description="File name, for example image-0.png.")
    url: str = Field(description="Where it was written: s3://bucket/key or file:///path.")
    media_type: str = Field(description="For example image/png.")
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the bytes written.")


class Checkpoint(CamelModel):
    """A complete training checkpoint: LoRA weights, optimizer, scheduler and RNG state."""

    step: int = Field(ge=0, description="Optimizer steps done when it was written.")
    url: str = Field(description="Its folder, <outputUri>checkpoints/step-<step>/.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of its checkpoint.json, which lists every file's SHA-256.",
    )


class TrainingProgress(CamelModel):
    """Where a training run stands (task train); steps are optimizer steps."""

    epoch: int = Field(ge=0, description="Passes over the dataset begun, from 1.")
    loss: float | None = Field(default=None, description="The last step's loss.")
    smoothed_loss: float | None = Field(default=None, description="Exponential moving average of the loss.")
    learning_rate: float = Field(ge=0)
    steps_per_second: float | None = Field(default=None, ge=0, description="Over this attempt so far.")
    eta_seconds: float | None = Field(default=None, ge=0, description="Left at steps_per_second.")
    resumed_from_step: int | None = Field(
        default=None, ge=0, description="The checkpoint this attempt resumed from; None when from scratch."
    )
    checkpoints: list[Checkpoint] = Field(default_factory=list, description="Written so far, oldest first.")
    samples: list[Artifact] = Field(default_factory=list, description="Sample images written so far.")


class Progress(CamelModel):
    step: int = Field(ge=0, description="Units done, counted in unit.")
    total_steps: int = Field(ge=0)
    percent: int = Field(ge=0, le=100)
    unit: ProgressUnit = Field(
        default="steps",
        description="steps: denoising steps; tokens: tokens generated of the most asked; stages: stages.",
    )
    stage: str | None = Field(default=None, description="The stage just finished, where the task has stages.")
    training: TrainingProgress | None = Field(default=None, description="Set by train runs.")
    text: str | None = Field(
        default=None,
        max_length=MAX_PROGRESS_TEXT_CHARS,
        description=(
            f"caption: the last {MAX_PROGRESS_TEXT_CHARS} characters of the text generated so far. "
            "Once a run has ended only its final status carries it, not its earlier progress events."
        ),
    )


ModelLoadSource = Literal["resident", "disk", "remote"]


class ModelLoad(CamelModel):
    """How a run got its model onto its GPU."""

    warm: bool = Field(description="The model was resident on the run's GPU when the run was admitted.")
    source: ModelLoadSource = Field(
        description="resident: already on the GPU; disk: loaded from local files (the disk cache, "
        "the image or a mounted volume); remote: downloaded first (s3://)."
    )
    loading: bool = Field(default=False, description="The run is still waiting for the load.")
    seconds: float | None = Field(
        default=None, ge=0, description="How long the run waited for its model; set once loaded."
    )
    downloaded_bytes: int | None = Field(default=None, ge=0)
    total_bytes: int | None = Field(default=None, ge=0, description="Bytes to download, when known.")


class RunResult(CamelModel):
    """What a run answered besides its artifacts."""

    text: str | None = Field(
        default=None,
        max_length=MAX_RESULT_TEXT_CHARS,
        description="A text task's answer, cut to the bound; the whole text is the text/plain artifact.",
    )
    truncated: bool = False


class JobStatus(CamelModel):
    """One run on this worker."""

    run_id: str
    job_id: str
    attempt: int
    job_uid: str | None = Field(default=None, description="The uid of the job it was submitted for.")
    task: Task
    model: str
    seed: int = Field(description="The seed used; chosen at random when the input had none.")
    phase: Phase
    reason: Reason | None = Field(default=None, description="Set once the run has ended.")
    message: str = ""
    progress: Progress
    gpu: str = Field(description="UUID of the GPU the run was admitted on.")
    model_load: ModelLoad | None = Field(
        default=None,
        description="Whether the run found its model resident on its GPU or waited for a load.",
    )
    vram_reserved_bytes: int = Field(ge=0, description="VRAM held for this run now; 0 once it has ended.")
    created_at: datetime
    finished_at: datetime | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    result: RunResult | None = Field(default=None, description="Set when a text task succeeds.")


class JobList(CamelModel):
    jobs: list[JobStatus]


class JobEvent(CamelModel):
    """The ``data:`` of one server-sent event; which field is set follows the event name."""

    run_id: str
    event: EventName
    progress: Progress | None = None
    status: JobStatus | None = None

    @model_validator(mode="after")
    def _payload_matches_event(self) -> JobEvent:
        wanted = "progress" if self.event is EventName.PROGRESS else "status"
        if getattr(self, wanted) is None:
            raise ValueError(f"a {self.event.value} event carries {wanted}")
        return self


class GpuInfo(CamelModel):
    """One GPU as NVML reports it, beside what this worker has reserved on it."""

    index: int
    uuid: str
    product: str
    simulated: bool = Field(description="True when no GPU exists and the worker reports a configured one.")
    memory_total_bytes: int
    memory_used_bytes: int = Field(description="Used by all processes, as NVML reports it.")
    memory_free_bytes: int = Field(description="Free as NVML reports it.")
    utilization_percent: int | None = Field(
        default=None, description="GPU busy percent over NVML's last sample period."
    )
    reserved_bytes: int = Field(description="Resident model weights plus running jobs' reservations.")
    admittable_bytes: int = Field(
        description="The most VRAM a new job may reserve on this GPU now (total - reserved)."
    )
    running_jobs: int
    models_bytes: int = Field(default=0, ge=0, description="VRAM held by resident and loading models.")
    jobs_bytes: int = Field(default=0, ge=0, description="VRAM reserved by running jobs.")
    evictable_bytes: int = Field(
        default=0,
        ge=0,
        description="VRAM of resident models a load may evict (idle and not pinned; see modelcache).",
    )
    models: list[ResidentModel] = Field(default_factory=list, description="Models on this GPU.")


class ModelState(StrEnum):
    AVAILABLE = "Available"  # loadable on demand, resident on no GPU now
    LOADING = "Loading"  # being loaded onto a GPU, resident on none
    LOADED = "Loaded"  # resident on at least one GPU
    FAILED = "Failed"  # its source cannot be used (missing, unreachable, digest mismatch)


class ResidentModel(CamelModel):
    """A model held in one GPU's memory."""

    name: str
    vram_bytes: int = Field(ge=0)
    state: Literal[ModelState.LOADING, ModelState.LOADED]
    running_jobs: int = Field(ge=0)
    pinned: bool = Field(default=False, description="Preloaded and never evicted.")
    last_used_at: datetime | None = None


class ModelInfo(CamelModel):
    name: str
    source: str
    vram_bytes: int = Field(description="VRAM one resident copy holds, per GPU.")
    tasks: list[Task]
    state: ModelState
    load_seconds: float | None = Field(default=None, description="The last load's duration.")
    message: str = ""
    retry_at: datetime | None = Field(
        default=None,
        description="When a model Failed for a transient cause is tried again; absent for a permanent "
        "cause, which this worker does not try again.",
    )
    resident_gpus: list[str] = Field(default_factory=list, description="UUIDs of GPUs holding it.")
    loading_gpus: list[str] = Field(default_factory=list, description="UUIDs of GPUs loading it.")
    on_disk: bool = Field(
        default=False, description="Its files are local (disk cache, image or volume): no download needed."
    )
    disk_bytes: int | None = Field(default=None, ge=0, description="Bytes its files take in the disk cache.")
    preload: bool = Field(default=False, description="Loaded at start and pinned (never evicted).")
    loads: int = Field(default=0, ge=0, description="Loads onto a GPU since the worker started.")
    evictions: int = Field(default=0, ge=0, description="Evictions from a GPU since the worker started.")
    warm_hits: int = Field(default=0, ge=0, description="Runs that found it resident on their GPU.")


class ModelCacheInfo(CamelModel):
    """The worker's disk cache of downloaded model files."""

    path: str
    capacity_bytes: int = Field(ge=0)
    used_bytes: int = Field(ge=0)


class Inventory(CamelModel):
    """``GET /v1/inventory``: the worker's GPUs, models and runs."""

    worker: str = Field(description="This worker's name (the pod name in a cluster).")
    instance: str | None = Field(
        default=None,
        max_length=64,
        description="Names this worker process: a new one after every restart, which has no runs.",
    )
    ready: bool
    max_jobs_per_gpu: int
    gpus: list[GpuInfo]
    models: list[ModelInfo]
    jobs: list[JobStatus] = Field(description="Runs that have not ended.")
    model_cache: ModelCacheInfo | None = Field(default=None, description="None without a disk cache.")


class Health(CamelModel):
    status: Literal["ok", "unavailable"]
    message: str = ""


class ErrorResponse(CamelModel):
    """The body of every 4xx/5xx answer."""

    reason: Reason
    message: str = Field(description="What was wrong, naming the field and the rule.")
    asked_bytes: int | None = Field(default=None, description="InsufficientVRAM: VRAM asked for.")
    free_bytes: int | None = Field(
        default=None, description="InsufficientVRAM: the most any GPU could admit."
    )
