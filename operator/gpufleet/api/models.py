"""WorkerPool and GenerationJob (gpufleet.io/v1alpha1): spec and status, as pydantic models.

These models are the single source of truth for the API: ``python -m gpufleet.api.crdgen``
derives the CRDs in ``crds/`` from them (OpenAPI schema plus the CEL rules declared here),
and the operator parses and writes objects with them. Every CEL rule has a Python twin in a
validator below, with the same message, so a spec the API server refuses is refused here too.

Field names are camelCase on the wire and snake_case in Python; unknown fields are refused.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from gpufleet import labels
from gpufleet.api.cel import (
    VALIDATIONS,
    make_field_immutable,
    quantity_expr,
    rule,
    validations,
)
from gpufleet.api.conditions import MAX_CONDITIONS, REASON_PATTERN, Condition, JobPhase
from gpufleet.api.fields import (
    DNS_LABEL_PATTERN,
    MAX_QUALIFIED_NAME_CHARS,
    QUALIFIED_NAME_PATTERN,
    DnsLabel,
    DnsSubdomain,
    LabelValue,
    QuantityValue,
    Timestamp,
    UniqueItems,
    VramQuantity,
)
from gpufleet.api.inputs import (
    MAX_PROGRESS_TEXT_CHARS,
    MAX_RESULT_TEXT_CHARS,
    SEGMENT_REQUIRED_RULE,
    TASK_SECTIONS,
    TASKS_NEEDING_IMAGE,
    TASKS_NEEDING_PROMPT,
    TRAINING_REQUIRED_RULE,
    CamelModel,
    JobInput,
    Task,
    input_problems,
    section_rule,
)
from gpufleet.api.outputs import OUTPUT_URI_PATTERN, UNWRITABLE, cel_rule, output_uri_problems
from gpufleet.api.quantity import parse_quantity
from gpufleet.api.servedmodels import (
    BUILTIN_SCHEME,
    DEFAULT_MODEL_CACHE_SIZE,
    DIGEST_NEEDS_FILES_RULE,
    DIGEST_PATTERN,
    MAX_MODEL_NAME_CHARS,
    MAX_MODEL_SOURCE_CHARS,
    MODEL_NAME_PATTERN,
    MODEL_SOURCE_PATTERN,
    SOURCE_RULES,
    source_problems,
)

GROUP = labels.GROUP
VERSION = "v1alpha1"
API_VERSION: Literal["gpufleet.io/v1alpha1"] = "gpufleet.io/v1alpha1"  # GROUP/VERSION, as a type

MAX_MODELS = 32
MAX_REPLICAS = 1000
MAX_GPUS_PER_WORKER = 16
MAX_JOBS_PER_GPU = 64
MAX_URI_CHARS = 2048
MAX_WORKERS_IN_STATUS = MAX_REPLICAS
MAX_ARTIFACTS = 256
MAX_POOL_NAME_CHARS = 52  # leaves room for the pod name suffix within 63 characters
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_TTL_SECONDS = 365 * 24 * 3600
MAX_PRIORITY = 1_000_000

IMAGE_PATTERN = (
    r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
MEDIA_TYPE_PATTERN = r"^[a-z]+/[A-Za-z0-9.+-]+$"


def _preserved_object(description: str) -> WithJsonSchema:
    """An object kept as written (for Kubernetes types too large to restate here)."""
    return WithJsonSchema(
        {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "description": description}
    )


# --- WorkerPool spec --------------------------------------------------------------------------


class Runtime(StrEnum):
    BUILTIN = "builtin"  # the built-in small model, for smoke tests and demos
    DIFFUSERS = "diffusers"  # diffusers pipelines loaded from a model directory
    CUSTOM = "custom"  # your own image speaking the worker protocol


SOURCE_SCHEME_RULE = (
    "builtin:// models are served by runtime builtin only, and runtime builtin serves only builtin:// models"
)


class ServedModel(CamelModel):
    """A model the pool's workers serve."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                f"!has(self.digest) || !self.source.startsWith('{BUILTIN_SCHEME}')",
                DIGEST_NEEDS_FILES_RULE,
                field_path=".digest",
                reason="FieldValueForbidden",
            )
        )
    )

    name: str = Field(
        max_length=MAX_MODEL_NAME_CHARS,
        pattern=MODEL_NAME_PATTERN,
        description=(
            "What jobs write in spec.model, e.g. tiny-sd or sdxl-base-1.0: lower-case letters, "
            "digits, '-', '.' and '_'."
        ),
    )
    source: str = Field(
        max_length=MAX_MODEL_SOURCE_CHARS,
        pattern=MODEL_SOURCE_PATTERN,
        description=(
            "Where the weights are: builtin://NAME, file:///path (inside the image), "
            "s3://bucket/prefix (every object under prefix/, downloaded into the worker's model "
            "cache with the pool's S3 credentials) or pvc://claim/path (the claim is mounted "
            "read-only into the worker pods). No spaces or commas."
        ),
        json_schema_extra=validations(
            *(rule(f"!self.matches(r'{r.refused}')", r.message) for r in SOURCE_RULES)
        ),
    )
    digest: str | None = Field(
        default=None,
        max_length=71,
        pattern=DIGEST_PATTERN,
        description=(
            "sha256:<hex> of the model's manifest, checked before the worker uses the files: the "
            "sha256 of the lines '<file sha256>  <relative path>', sorted by path (what "
            "`find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum` "
            "prints in the model directory). A mismatch fails the model."
        ),
    )
    vram: VramQuantity = Field(description="GPU memory one loaded copy needs, e.g. 2Gi.")
    min_warm: int = Field(
        default=0,
        ge=0,
        le=MAX_REPLICAS,
        description=(
            "Copies to keep resident, each on its own GPU: autoscaling keeps enough workers to hold "
            "them, and drains a worker holding one of the last ones last."
        ),
    )
    tasks: Annotated[list[Task], UniqueItems()] | None = Field(
        default=None,
        min_length=1,
        max_length=len(Task),
        description=(
            "Tasks this model can do, e.g. [segment] for a SAM directory. Default: what its "
            "source and the pool's runtime can do (see docs/api.md)."
        ),
    )
    base: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME_CHARS,
        pattern=MODEL_NAME_PATTERN,
        description=(
            "A LoRA: the name of another of the pool's models (a diffusers pipeline) its weights "
            "attach to; source is then the LoRA weights (a .safetensors file, or a folder holding "
            "pytorch_lora_weights.safetensors). Runtime diffusers only; see docs/training.md."
        ),
    )
    preload: bool = Field(
        default=False,
        description=(
            "Load onto every GPU of every worker at start and never evict it; a worker is ready "
            "once its preload models are loaded. Other models load onto a GPU when a job first "
            "needs them there and are evicted, least recently used first, to make room."
        ),
    )

    @field_validator("source")
    @classmethod
    def _servable(cls, source: str) -> str:
        if problems := source_problems(source):
            raise ValueError("; ".join(problems))
        return source

    @model_validator(mode="after")
    def _digest_needs_files(self) -> ServedModel:
        if self.digest is not None and self.source.startswith(BUILTIN_SCHEME):
            raise ValueError(DIGEST_NEEDS_FILES_RULE)
        return self


class ModelCache(CamelModel):
    """The disk cache of each worker, where s3:// models are downloaded (an emptyDir volume)."""

    size: VramQuantity = Field(
        default=DEFAULT_MODEL_CACHE_SIZE,
        description=(
            "Disk the cache may use (the volume's sizeLimit); least recently used models not "
            "in use are removed to make room."
        ),
    )


class GpuRequirements(CamelModel):
    """The GPUs each worker pod gets."""

    count: int = Field(default=1, ge=1, le=MAX_GPUS_PER_WORKER, description="GPUs per worker pod.")
    min_memory: VramQuantity | None = Field(
        default=None,
        description="Memory each GPU must have (the nvidia.com/gpu.memory node label); "
        "when omitted, the largest model's vram.",
    )
    products: Annotated[list[LabelValue], UniqueItems()] = Field(
        default_factory=list,
        max_length=32,
        description="Allowed nvidia.com/gpu.product values; empty allows any.",
    )
    max_jobs_per_gpu: int = Field(
        default=1,
        alias="maxJobsPerGPU",
        ge=1,
        le=MAX_JOBS_PER_GPU,
        description="Jobs that may share one GPU when its memory allows.",
    )


AUTOSCALING_MIN_MAX_RULE = "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"


class Autoscaling(CamelModel):
    """The operator sizes the pool from its queue. It writes status.desiredReplicas and never edits spec."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "self.minReplicas <= self.maxReplicas",
                AUTOSCALING_MIN_MAX_RULE,
                field_path=".minReplicas",
            )
        )
    )

    min_replicas: int = Field(
        default=0, ge=0, le=MAX_REPLICAS, description="Fewest workers; 0 allows scaling to zero."
    )
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, description="Most workers.")
    target_jobs_per_worker: int = Field(
        default=1, ge=1, le=1000, description="Queued plus running jobs each worker should have."
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="How long a higher size must be wanted before scaling up."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=3600, description="How long a lower size must be wanted before scaling down."
    )
    idle_seconds_before_zero: int = Field(
        default=300, ge=0, le=86400, description="How long a pool must be idle before scaling to zero."
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(AUTOSCALING_MIN_MAX_RULE)
        return self


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


TOLERATION_EXISTS_RULE = "a toleration with operator Exists must not have a value"


class Toleration(CamelModel):
    """A corev1 Toleration: lets worker pods run on nodes with a matching taint."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("self.operator != 'Exists' || !has(self.value)", TOLERATION_EXISTS_RULE, field_path=".value")
        )
    )

    key: str | None = Field(default=None, max_length=MAX_QUALIFIED_NAME_CHARS, pattern=QUALIFIED_NAME_PATTERN)
    operator: TolerationOperator = TolerationOperator.EQUAL
    value: LabelValue | None = None
    effect: TaintEffect | None = Field(default=None, description="Empty matches every effect.")
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="NoExecute only: how long the pod stays after the taint.",
    )

    @model_validator(mode="after")
    def _exists_without_value(self) -> Toleration:
        if self.operator is TolerationOperator.EXISTS and self.value is not None:
            raise ValueError(TOLERATION_EXISTS_RULE)
        return self


class Affinity(CamelModel):
    """Extra scheduling constraints, as corev1 Affinity; the operator adds its GPU constraints to these."""

    node_affinity: Annotated[dict[str, Any] | None, _preserved_object("corev1 NodeAffinity.")] = None
    pod_affinity: Annotated[dict[str, Any] | None, _preserved_object("corev1 PodAffinity.")] = None
    pod_anti_affinity: Annotated[dict[str, Any] | None, _preserved_object("corev1 PodAntiAffinity.")] = None


RESERVED_LABEL_RULE = f"keys under {labels.GROUP}/ are reserved for the operator"
KEY_SYNTAX_RULE = (
    "keys must be label keys: an optional DNS subdomain and '/', then a name of at most 63 characters"
)
SYSTEM_PRIORITY_RULE = "system-* priority classes are reserved for cluster components"
# Annotations that loosen a pod's security profile; a pool author may not set them.
SECURITY_ANNOTATION_PREFIXES = (
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
)
SECURITY_ANNOTATION_RULE = (
    "annotations that set AppArmor or seccomp profiles are reserved: workers run restricted"
)


def _key_rules(reserved_prefix: bool) -> dict[str, Any]:
    rules = [
        rule(
            f"self.all(k, k.size() <= {MAX_QUALIFIED_NAME_CHARS} && k.matches(r'{QUALIFIED_NAME_PATTERN}'))",
            KEY_SYNTAX_RULE,
        )
    ]
    if reserved_prefix:
        rules.append(rule(f"self.all(k, !k.startsWith('{labels.GROUP}/'))", RESERVED_LABEL_RULE))
    return validations(*rules)


def _check_keys(keys: list[str], reserved_prefix: bool) -> None:
    for key in keys:
        if len(key) > MAX_QUALIFIED_NAME_CHARS or not re.search(QUALIFIED_NAME_PATTERN, key):
            raise ValueError(f"{key!r}: {KEY_SYNTAX_RULE}")
        if reserved_prefix and key.startswith(f"{labels.GROUP}/"):
            raise ValueError(f"{key!r}: {RESERVED_LABEL_RULE}")


def _annotation_rules() -> dict[str, Any]:
    rules = _key_rules(reserved_prefix=True)
    prefixes = " || ".join(f"k.startsWith('{p}')" for p in SECURITY_ANNOTATION_PREFIXES)
    rules[VALIDATIONS].append(rule(f"self.all(k, !({prefixes}))", SECURITY_ANNOTATION_RULE))
    return rules


GPU_RESOURCE_RULE = f"must not set {labels.GPU_RESOURCE}: the operator requests spec.gpu.count GPUs"


def _resource_rules() -> dict[str, Any]:
    rules = _key_rules(reserved_prefix=False)
    rules[VALIDATIONS].append(rule(f"!('{labels.GPU_RESOURCE}' in self)", GPU_RESOURCE_RULE))
    return rules


class ExtraResources(CamelModel):
    """Resources the worker container gets besides its GPUs (CPU, memory, ephemeral storage, ...)."""

    requests: dict[str, QuantityValue] = Field(
        default_factory=dict, max_length=16, json_schema_extra=_resource_rules()
    )
    limits: dict[str, QuantityValue] = Field(
        default_factory=dict, max_length=16, json_schema_extra=_resource_rules()
    )

    @model_validator(mode="after")
    def _no_gpus(self) -> ExtraResources:
        _check_keys([*self.requests, *self.limits], reserved_prefix=False)
        if labels.GPU_RESOURCE in self.requests or labels.GPU_RESOURCE in self.limits:
            raise ValueError(GPU_RESOURCE_RULE)
        return self


class ConfigMapKeyRef(CamelModel):
    name: DnsSubdomain
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool = False


class FieldPath(StrEnum):
    """Downward API fields a worker may read."""

    NAME = "metadata.name"
    NAMESPACE = "metadata.namespace"
    UID = "metadata.uid"
    NODE_NAME = "spec.nodeName"
    POD_IP = "status.podIP"
    HOST_IP = "status.hostIP"


class FieldRef(CamelModel):
    field_path: FieldPath


ENV_SOURCE_RULE = "exactly one of configMapKeyRef or fieldRef must be set"


class EnvVarSource(CamelModel):
    """Where an env value comes from. Secrets are deliberately absent: with a custom image, a
    pool author could read any Secret in the namespace through it."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("has(self.configMapKeyRef) != has(self.fieldRef)", ENV_SOURCE_RULE)
        )
    )

    config_map_key_ref: ConfigMapKeyRef | None = None
    field_ref: FieldRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.config_map_key_ref is None) == (self.field_ref is None):
            raise ValueError(ENV_SOURCE_RULE)
        return self


RESERVED_ENV_PREFIXES = ("NVIDIA_", "GPUFLEET_")
RESERVED_ENV_NAMES = (
    "CUDA_VISIBLE_DEVICES",
    "POD_NAME",
    "POD_IP",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)
ENV_RESERVED_RULE = (
    "env names NVIDIA_*, CUDA_VISIBLE_DEVICES, GPUFLEET_*, POD_NAME, POD_IP and the AWS_* credentials "
    "are reserved: the device plugin picks the GPUs and the operator configures the worker"
)
ENV_VALUE_RULE = "value and valueFrom are mutually exclusive"


class EnvVar(CamelModel):
    """An environment variable for the worker container."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                " && ".join(
                    [f"!self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES]
                    + [f"self.name != '{n}'" for n in RESERVED_ENV_NAMES]
                ),
                ENV_RESERVED_RULE,
                field_path=".name",
                reason="FieldValueForbidden",
            ),
            rule("!(has(self.value) && has(self.valueFrom))", ENV_VALUE_RULE),
        )
    )

    name: str = Field(max_length=256, pattern=ENV_NAME_PATTERN)
    value: str | None = Field(default=None, max_length=32768)
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _allowed(self) -> EnvVar:
        if self.name.startswith(RESERVED_ENV_PREFIXES) or self.name in RESERVED_ENV_NAMES:
            raise ValueError(f"{self.name}: {ENV_RESERVED_RULE}")
        if self.value is not None and self.value_from is not None:
            raise ValueError(ENV_VALUE_RULE)
        return self


class PodOverrides(CamelModel):
    """Safe overrides for the worker pods. Service accounts, host paths, privileged settings and
    anything else that would let a pool author do more than the worker's restricted pod are
    not fields here, so the API server refuses them as unknown fields."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                "!has(self.priorityClassName) || !self.priorityClassName.startsWith('system-')",
                SYSTEM_PRIORITY_RULE,
                field_path=".priorityClassName",
                reason="FieldValueForbidden",
            )
        )
    )

    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels for the worker pods.",
        json_schema_extra=_key_rules(True),
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=32,
        description="Annotations for the worker pods.",
        json_schema_extra=_annotation_rules(),
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Node labels the worker pods require.",
        json_schema_extra=_key_rules(False),
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16)
    affinity: Affinity | None = None
    resources: ExtraResources | None = None
    env: Annotated[list[EnvVar], UniqueItems("name")] = Field(default_factory=list, max_length=64)
    priority_class_name: DnsSubdomain | None = None
    runtime_class_name: DnsLabel | None = None

    @model_validator(mode="after")
    def _safe(self) -> PodOverrides:
        _check_keys(list(self.labels), reserved_prefix=True)
        _check_keys(list(self.annotations), reserved_prefix=True)
        for key in self.annotations:
            if key.startswith(SECURITY_ANNOTATION_PREFIXES):
                raise ValueError(f"{key!r}: {SECURITY_ANNOTATION_RULE}")
        _check_keys(list(self.node_selector), reserved_prefix=False)
        if self.priority_class_name is not None and self.priority_class_name.startswith("system-"):
            raise ValueError(SYSTEM_PRIORITY_RULE)
        return self


MODEL_FITS_GPU_RULE = "every models[].vram must fit in gpu.minMemory"
LORA_BASE_RULE = (
    "models[].base must name another of the pool's models that has no base itself, "
    "and only runtime diffusers serves LoRAs"
)


class WorkerPoolSpec(CamelModel):
    """A fleet of identical GPU workers."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule(
                # Unparsable quantities are reported by their own fields' rules, not here.
                "!has(self.gpu) || !has(self.gpu.minMemory) || !isQuantity(string(self.gpu.minMemory)) "
                "|| self.models.all(m, !isQuantity(string(m.vram)) || "
                f"{quantity_expr('m.vram')}.compareTo({quantity_expr('self.gpu.minMemory')}) <= 0)",
                MODEL_FITS_GPU_RULE,
                field_path=".models",
            ),
            rule(
                f"self.models.all(m, m.source.startsWith('{BUILTIN_SCHEME}') == (self.runtime == 'builtin'))",
                SOURCE_SCHEME_RULE,
                field_path=".models",
            ),
            rule(
                "self.models.all(m, !has(m.base) || (self.runtime == 'diffusers' && "
                "self.models.exists(b, b.name == m.base && b.name != m.name && !has(b.base))))",
                LORA_BASE_RULE,
                field_path=".models",
            ),
        )
    )

    runtime: Runtime = Field(default=Runtime.BUILTIN, description="The worker runtime the image runs.")
    image: str = Field(max_length=512, pattern=IMAGE_PATTERN, description="Worker container image.")
    models: Annotated[list[ServedModel], UniqueItems("name")] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description="Models the workers serve.",
    )
    tasks: Annotated[list[Task], UniqueItems()] = Field(
        min_length=1,
        max_length=len(Task),
        description="Tasks the workers accept.",
    )
    gpu: GpuRequirements = Field(default_factory=GpuRequirements)
    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS,
        description="Workers when autoscaling is absent; what kubectl scale, HPA or KEDA set.",
    )
    autoscaling: Autoscaling | None = None
    model_cache: ModelCache = Field(default_factory=ModelCache)
    template: PodOverrides = Field(default_factory=PodOverrides)

    @model_validator(mode="after")
    def _consistent(self) -> WorkerPoolSpec:
        if self.gpu.min_memory is not None:
            limit = parse_quantity(self.gpu.min_memory)
            too_big = [m.name for m in self.models if parse_quantity(m.vram) > limit]
            if too_big:
                raise ValueError(f"{MODEL_FITS_GPU_RULE}; too big: {', '.join(too_big)}")
        mismatched = [
            m.name
            for m in self.models
            if m.source.startswith(BUILTIN_SCHEME) != (self.runtime is Runtime.BUILTIN)
        ]
        if mismatched:
            raise ValueError(f"{SOURCE_SCHEME_RULE}; runtime {self.runtime.value}: {', '.join(mismatched)}")
        plain = {m.name for m in self.models if m.base is None}
        if orphans := [m.name for m in self.models if m.base is not None and m.base not in plain]:
            raise ValueError(f"{LORA_BASE_RULE}; models: {', '.join(orphans)}")
        if self.runtime is not Runtime.DIFFUSERS and any(m.base for m in self.models):
            raise ValueError(f"{LORA_BASE_RULE}; runtime is {self.runtime.value}")
        return self


# --- WorkerPool status ------------------------------------------------------------------------


class GpuStatus(CamelModel):
    """One GPU of a worker, as the worker reports it, with what the operator placed on it."""

    id: str = Field(max_length=128, description="The GPU's UUID, e.g. GPU-3f2c0b1e-....")
    product: str = Field(max_length=128, description="e.g. NVIDIA-A100-SXM4-80GB.")
    memory_total: QuantityValue | None = None
    memory_reserved: QuantityValue | None = Field(
        default=None, description="Reserved for the jobs placed on it."
    )
    memory_free: QuantityValue | None = Field(default=None, description="Free as the GPU last reported it.")
    memory_models: QuantityValue | None = Field(
        default=None, description="Of memoryReserved, what the models resident or loading on it hold."
    )
    memory_jobs: QuantityValue | None = Field(
        default=None, description="Of memoryReserved, what its running jobs reserved."
    )
    models: Annotated[list[Annotated[str, Field(max_length=MAX_MODEL_NAME_CHARS)]], UniqueItems()] = Field(
        default_factory=list, max_length=MAX_MODELS, description="Models resident or loading on it."
    )


class WorkerStatus(CamelModel):
    """One worker pod."""

    pod: DnsSubdomain
    node: DnsSubdomain | None = None
    ready: bool = False
    gpus: list[GpuStatus] = Field(default_factory=list, max_length=MAX_GPUS_PER_WORKER)
    loaded_models: Annotated[list[Annotated[str, Field(max_length=MAX_MODEL_NAME_CHARS)]], UniqueItems()] = (
        Field(default_factory=list, max_length=MAX_MODELS)
    )
    jobs: Annotated[list[Annotated[str, Field(max_length=253)]], UniqueItems()] = Field(
        default_factory=list,
        max_length=MAX_GPUS_PER_WORKER * MAX_JOBS_PER_GPU,
        description="Names of the jobs running on this worker.",
    )


class ModelStatus(CamelModel):
    """One served model across the pool's ready workers, summed from their reports."""

    name: str = Field(max_length=MAX_MODEL_NAME_CHARS)
    resident: int = Field(default=0, ge=0, description="GPUs holding a copy now.")
    loading: int = Field(default=0, ge=0, description="GPUs loading a copy now.")
    loads: int = Field(default=0, ge=0, description="Loads onto a GPU since each worker started.")
    evictions: int = Field(default=0, ge=0, description="Copies evicted since each worker started.")
    warm_hits: int = Field(default=0, ge=0, description="Runs that found it resident on their GPU.")
    failed: int = Field(default=0, ge=0, description="Workers that cannot use its source.")
    message: str = Field(default="", max_length=1024, description="Why it failed, on the first such worker.")


class WorkerPoolStatus(CamelModel):
    """What the operator observed and decided about the pool."""

    observed_generation: int | None = Field(default=None, ge=0)
    replicas: int = Field(
        default=0, ge=0, description="Worker pods that exist (the scale subresource's status)."
    )
    desired_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Workers the operator wants: spec.replicas, or the autoscaler's choice.",
    )
    ready_replicas: int = Field(default=0, ge=0, description="Workers ready to take jobs.")
    selector: str | None = Field(
        default=None, max_length=1024, description="Label selector of the worker pods."
    )
    queue_depth: int = Field(default=0, ge=0, description="Jobs queued for this pool.")
    running_jobs: int = Field(default=0, ge=0, description="Jobs running on this pool's workers.")
    workers: Annotated[list[WorkerStatus], UniqueItems("pod")] = Field(
        default_factory=list, max_length=MAX_WORKERS_IN_STATUS
    )
    models: Annotated[list[ModelStatus], UniqueItems("name")] = Field(
        default_factory=list,
        max_length=MAX_MODELS,
        description="Each served model's copies, loads, evictions and warm hits on the ready workers.",
    )
    conditions: Annotated[list[Condition], UniqueItems("type")] = Field(
        default_factory=list, max_length=MAX_CONDITIONS
    )


# --- GenerationJob spec -----------------------------------------------------------------------


class PoolRef(CamelModel):
    """The WorkerPool, in the job's namespace, that runs the job."""

    name: DnsLabel


class RetryPolicy(CamelModel):
    """How often a job is tried when its worker fails or is lost."""

    max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts in all, the first included.")
    backoff_seconds: int = Field(
        default=10, ge=0, le=3600, description="Wait before the next attempt; doubles each time."
    )


OUTPUT_SCHEME_RULE = "output.uri must be an s3:// URI, like s3://bucket/prefix/"


class OutputSpec(CamelModel):
    """Where artifacts go: under ``<uri>/<job name>/``."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            rule("self.uri.startsWith('s3://')", OUTPUT_SCHEME_RULE, field_path=".uri")
        )
    )

    uri: str = Field(
        max_length=1024,
        pattern=OUTPUT_URI_PATTERN,
        description="S3-compatible URI prefix.",
        json_schema_extra=validations(*(rule(cel_rule(r), f"output.uri: {r.message}") for r in UNWRITABLE)),
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _scheme(cls, value: object) -> object:
        # Before the pattern, so the message names the rule rather than quoting the regex.
        if isinstance(value, str) and not value.startswith("s3://"):
            raise ValueError(OUTPUT_SCHEME_RULE)
        return value

    @field_validator("uri")
    @classmethod
    def _writable(cls, uri: str) -> str:
        if problems := output_uri_problems(uri):
            raise ValueError("; ".join(f"output.uri: {problem}" for problem in problems))
        return uri


IMMUTABLE_SPEC_RULE = "is immutable: a GenerationJob's spec cannot change after creation, except spec.cancel"
CANCEL_RULE = "spec.cancel cannot go back to false once true"
IMAGE_REQUIRED_RULE = "input.image is required for tasks " + ", ".join(sorted(TASKS_NEEDING_IMAGE))
MASK_REQUIRED_RULE = "input.mask is required for task inpaint"
PROMPT_REQUIRED_RULE = "input.prompt is required for tasks " + ", ".join(sorted(TASKS_NEEDING_PROMPT))


MUTABLE_SPEC_FIELDS = ("cancel",)  # its own rule: it can only go from false to true


def make_spec_immutable(schema: dict[str, Any]) -> None:
    """Transition rules on the job spec's structural schema (references inlined, so the CRD
    generator calls this) that refuse any change but spec.cancel's."""
    for name in schema["properties"]:
        if name not in MUTABLE_SPEC_FIELDS:
            make_field_immutable(schema, name, f"spec.{name} {IMMUTABLE_SPEC_RULE}")


def _cel_list(tasks: frozenset[Task]) -> str:
    return "[" + ", ".join(f"'{t.value}'" for t in sorted(tasks)) + "]"


def _section_rules() -> list[dict[str, Any]]:
    """Each task's input section (input.segment, ...) only with that task."""
    return [
        rule(
            f"!has(self.input.{section}) || self.task == '{task.value}'",
            section_rule(section),
            field_path=f".input.{section}",
            reason="FieldValueForbidden",
        )
        for section, task in TASK_SECTIONS.items()
    ]


def _job_spec_rules(schema: dict[str, Any]) -> None:
    """The job spec's cross-field rules (task versus input), then its immutability rules."""
    schema.setdefault("x-kubernetes-validations", []).extend(
        [
            rule(
                f"!(self.task in {_cel_list(TASKS_NEEDING_IMAGE)}) || has(self.input.image)",
                IMAGE_REQUIRED_RULE,
                message_expression="'input.image is required for task ' + self.task",
                field_path=".input.image",
                reason="FieldValueRequired",
            ),
            rule(
                "self.task != 'inpaint' || has(self.input.mask)",
                MASK_REQUIRED_RULE,
                field_path=".input.mask",
                reason="FieldValueRequired",
            ),
            rule(
                f"!(self.task in {_cel_list(TASKS_NEEDING_PROMPT)}) "
                "|| (has(self.input.prompt) && self.input.prompt != '')",
                PROMPT_REQUIRED_RULE,
                message_expression="'input.prompt is required for task ' + self.task",
                field_path=".input.prompt",
                reason="FieldValueRequired",
            ),
            rule(
                "self.task != 'segment' || has(self.input.segment)",
                SEGMENT_REQUIRED_RULE,
                field_path=".input.segment",
                reason="FieldValueRequired",
            ),
            rule(
                "self.task != 'train' || has(self.input.training)",
                TRAINING_REQUIRED_RULE,
                field_path=".input.training",
                reason="FieldValueRequired",
            ),
            *_section_rules(),
        ]
    )


class GenerationJobSpec(CamelModel):
    """One unit of work for a pool. Immutable after creation, except cancel."""

    model_config = ConfigDict(json_schema_extra=lambda schema, _cls: _job_spec_rules(schema))

    pool_ref: PoolRef
    task: Task
    model: str = Field(
        max_length=MAX_MODEL_NAME_CHARS,
        pattern=MODEL_NAME_PATTERN,
        description="One of the pool's models[].name.",
    )
    input: JobInput
    vram: VramQuantity | None = Field(
        default=None,
        description="GPU memory the job needs; when omitted, estimated from the model and input.",
    )
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")
    timeout_seconds: int = Field(
        default=3600,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="The job fails with DeadlineExceeded after this long.",
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    output: OutputSpec
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="Delete the job this long after it finished; kept when omitted.",
    )
    cancel: bool = Field(
        default=False,
        description="Set to true to stop the job; cannot be set back.",
        json_schema_extra=validations(rule("self || !oldSelf", CANCEL_RULE, reason="FieldValueForbidden")),
    )

    @model_validator(mode="after")
    def _input_fits_task(self) -> GenerationJobSpec:
        problems = input_problems(self.task, self.input)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- GenerationJob status ---------------------------------------------------------------------


class WorkerRef(CamelModel):
    """Where the current attempt runs."""

    pod: DnsSubdomain
    node: DnsSubdomain | None = None
    gpu: str | None = Field(default=None, max_length=128, description="The GPU's UUID.")
    instance: str | None = Field(
        default=None,
        max_length=64,
        description="The worker process the attempt was sent to; another after a worker restart.",
    )


class Progress(CamelModel):
    percent: int = Field(default=0, ge=0, le=100)
    step: int = Field(default=0, ge=0)
    total_steps: int = Field(default=0, ge=0)
    text: str | None = Field(
        default=None,
        max_length=MAX_PROGRESS_TEXT_CHARS,
        description=(
            f"caption: the last {MAX_PROGRESS_TEXT_CHARS} characters of the text generated so far, "
            "updated with each progress write; the whole answer is result.text."
        ),
    )


class ModelLoad(CamelModel):
    """Whether the current attempt found its model resident on its GPU."""

    warm: bool = Field(description="The model was resident on the attempt's GPU when it was admitted.")
    seconds: float | None = Field(
        default=None,
        ge=0,
        description="How long the attempt waited for its model to load; unset while it loads.",
    )


class Artifact(CamelModel):
    """One output the job wrote."""

    name: str = Field(max_length=253, pattern=r"^[A-Za-z0-9._-]+$", description="e.g. image-0.png.")
    url: str = Field(max_length=MAX_URI_CHARS, pattern=OUTPUT_URI_PATTERN)
    media_type: str = Field(max_length=128, pattern=MEDIA_TYPE_PATTERN, description="e.g. image/png.")
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN, max_length=64)


class JobResult(CamelModel):
    """What a job answered besides its artifacts (caption: the generated text)."""

    text: str | None = Field(
        default=None,
        max_length=MAX_RESULT_TEXT_CHARS,
        description=(
            f"The generated text, cut to {MAX_RESULT_TEXT_CHARS} characters; the whole text is "
            "the text/plain artifact."
        ),
    )
    truncated: bool = Field(default=False, description="True when text was cut.")


MAX_CHECKPOINTS_IN_STATUS = 20


class CheckpointRef(CamelModel):
    """A complete training checkpoint under the job's output prefix."""

    step: int = Field(ge=0, description="Optimizer steps done when it was written.")
    url: str = Field(
        max_length=MAX_URI_CHARS,
        pattern=OUTPUT_URI_PATTERN,
        description="Its folder, .../checkpoints/step-<n>/.",
    )
    sha256: str = Field(pattern=SHA256_PATTERN, max_length=64, description="SHA-256 of its checkpoint.json.")


class TrainingStatus(CamelModel):
    """Where a train job stands; steps are optimizer steps (status.progress counts them too)."""

    epoch: int = Field(default=0, ge=0, description="Passes over the dataset begun, from 1.")
    loss: float | None = Field(default=None, description="The last step's loss.")
    smoothed_loss: float | None = Field(default=None, description="Exponential moving average of the loss.")
    learning_rate: float | None = Field(default=None, ge=0)
    steps_per_second: float | None = Field(default=None, ge=0, description="Over the current attempt.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Seconds left at that rate.")
    resumed_from_step: int | None = Field(
        default=None, ge=0, description="The checkpoint the current attempt resumed from."
    )
    checkpoints: Annotated[list[CheckpointRef], UniqueItems("step")] = Field(
        default_factory=list,
        max_length=MAX_CHECKPOINTS_IN_STATUS,
        description=f"The latest {MAX_CHECKPOINTS_IN_STATUS} checkpoints, oldest first.",
    )
    weights: Artifact | None = Field(
        default=None, description="The trained LoRA (pytorch_lora_weights.safetensors), once it succeeded."
    )


class GenerationJobStatus(CamelModel):
    """What happened to the job."""

    phase: JobPhase | None = None
    queue_position: int | None = Field(default=None, ge=0, description="0 is next; set while Queued.")
    attempts: int = Field(default=0, ge=0, description="Attempts started so far.")
    worker: WorkerRef | None = None
    progress: Progress | None = None
    model_load: ModelLoad | None = None
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    artifacts: Annotated[list[Artifact], UniqueItems("name")] = Field(
        default_factory=list, max_length=MAX_ARTIFACTS
    )
    result: JobResult | None = None
    training: TrainingStatus | None = Field(default=None, description="train: loss, ETA and checkpoints.")
    reason: str | None = Field(default=None, max_length=1024, pattern=REASON_PATTERN)
    message: str | None = Field(default=None, max_length=32768)
    conditions: Annotated[list[Condition], UniqueItems("type")] = Field(
        default_factory=list, max_length=MAX_CONDITIONS
    )
    observed_generation: int | None = Field(default=None, ge=0)


# --- whole objects ----------------------------------------------------------------------------


POOL_NAME_RULE = (
    f"a WorkerPool's metadata.name must be a DNS label of at most {MAX_POOL_NAME_CHARS} "
    "characters: it names and labels the pool's pods"
)
POOL_NAME_CEL = rule(
    f"self.metadata.name.size() <= {MAX_POOL_NAME_CHARS} "
    f"&& self.metadata.name.matches(r'{DNS_LABEL_PATTERN}')",
    POOL_NAME_RULE,
)


class WorkerPool(CamelModel):
    """A WorkerPool object as the API server returns it."""

    model_config = ConfigDict(extra="ignore")  # metadata details, future status fields

    api_version: Literal["gpufleet.io/v1alpha1"] = API_VERSION
    kind: Literal["WorkerPool"] = "WorkerPool"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: WorkerPoolSpec
    status: WorkerPoolStatus = Field(default_factory=WorkerPoolStatus)

    @model_validator(mode="after")
    def _pool_name(self) -> WorkerPool:
        name = self.metadata.get("name")
        if name is not None and not (len(name) <= MAX_POOL_NAME_CHARS and re.search(DNS_LABEL_PATTERN, name)):
            raise ValueError(f"metadata.name {name!r}: {POOL_NAME_RULE}")
        return self


class GenerationJob(CamelModel):
    """A GenerationJob object as the API server returns it."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["gpufleet.io/v1alpha1"] = API_VERSION
    kind: Literal["GenerationJob"] = "GenerationJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: GenerationJobSpec
    status: GenerationJobStatus = Field(default_factory=GenerationJobStatus)


def to_manifest(obj: WorkerPool | GenerationJob) -> dict[str, Any]:
    """The object as JSON-ready data, as written to the API server (unset optionals omitted)."""
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
