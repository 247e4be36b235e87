"""Worker configuration: the models it serves, where it listens, its token, GPU and storage.

The operator generates a config file from the WorkerPool; flags and environment variables
override it (flags win over the environment, which wins over the file). Like the protocol,
this module imports no torch and no web framework, so the operator can build a
``WorkerConfig`` and write it with ``config_file_text``.

Config file (YAML or JSON, camelCase)::

    name: sd15-7xk2p                 # default: $POD_NAME, else the host name
    host: 0.0.0.0                    # a pod passes --host $(POD_IP)
    port: 8080
    tokenFile: /var/run/gpufleet/token
    device: auto                     # auto | cpu | cuda
    maxJobsPerGpu: 4
    models:
      - {name: tiny-sd, source: "builtin://tiny-sd", vram: 512Mi}
      - {name: sd15, source: "file:///models/sd15", vram: 3Gi, preload: true}
      - {name: sdxl, source: "s3://weights/sdxl", vram: 8Gi, digest: "sha256:..."}
    simulatedGpu: {product: NVIDIA-A100-SXM4-40GB, memory: 40Gi, count: 1}
    s3: {endpointUrl: "http://minio:9000", region: us-east-1}
    modelCache: {path: /var/cache/gpufleet/models, capacity: 50Gi}   # s3:// models go here
    pvcMounts: {weights: /mnt/weights}   # pvc://weights/...; default /var/lib/gpufleet/claims/NAME
    localOutputRoot: /data/artifacts # enables file:/// output URIs under this folder
    imageFetch: {maxBytes: 20Mi, timeoutSeconds: 10, allowedNetworks: []}
    keepFinishedJobs: 1000
    maxRequestBytes: 1Mi             # larger request bodies get 413

Environment: ``GPUFLEET_WORKER_CONFIG`` (config file path), ``POD_NAME``,
``GPUFLEET_SIMULATED_GPU_PRODUCT`` / ``_MEMORY`` / ``_COUNT`` (the simulated GPU),
``GPUFLEET_S3_ENDPOINT``, ``AWS_REGION``, and the S3 credentials ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, which are read from the environment only (never from the file).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, field_validator, model_validator

from gpufleet.api.inputs import CamelModel, Task
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
    S3_SCHEME,
    pvc_mount_path,
    source_problems,
)


def parse_bytes(value: Any) -> Any:
    """A Kubernetes quantity of bytes ("512Mi", "2Gi", "1G", 1024) as an int."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return value  # pydantic reports the type error
    return parse_quantity(value).value()  # QuantityError is a ValueError: pydantic names the field


Bytes = Annotated[int, BeforeValidator(parse_bytes)]


class ModelSpec(CamelModel):
    name: str = Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS, pattern=MODEL_NAME_PATTERN)
    source: str = Field(
        max_length=MAX_MODEL_SOURCE_CHARS,
        pattern=MODEL_SOURCE_PATTERN,
        description=(
            "builtin://NAME, file:///path of a saved model directory, s3://bucket/prefix "
            "(downloaded into the model cache) or pvc://claim/path (read where the claim is mounted)."
        ),
    )
    vram: Bytes = Field(gt=0, description="VRAM one resident copy holds.")
    tasks: list[Task] | None = Field(
        default=None, description="Tasks to accept; default: every task the model supports."
    )
    base: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODEL_NAME_CHARS,
        pattern=MODEL_NAME_PATTERN,
        description=(
            "A LoRA: the name of another of these models, a diffusers pipeline, its weights "
            "(source: a .safetensors file, or a folder holding pytorch_lora_weights.safetensors) "
            "attach to. The base is loaded once per GPU; its LoRAs are adapters on it."
        ),
    )
    preload: bool = Field(
        default=False,
        description="Load onto every GPU at start and never evict; the worker is ready once loaded.",
    )
    digest: str | None = Field(
        default=None, pattern=DIGEST_PATTERN, description="sha256:<hex> of the files' manifest."
    )

    @field_validator("source")
    @classmethod
    def _servable(cls, source: str) -> str:
        if problems := source_problems(source):
            raise ValueError(f"source {source!r}: {'; '.join(problems)}")
        return source

    @model_validator(mode="after")
    def _digest_needs_files(self) -> ModelSpec:
        if self.digest is not None and self.source.startswith(BUILTIN_SCHEME):
            raise ValueError(DIGEST_NEEDS_FILES_RULE)
        return self


class ModelCacheConfig(CamelModel):
    """The disk cache s3:// models are downloaded into."""

    path: Path | None = Field(default=None, description="A directory only this worker uses.")
    capacity: Bytes = Field(
        default=parse_quantity(DEFAULT_MODEL_CACHE_SIZE).value(), gt=0, description="Bytes it may hold."
    )


class ModelRetryConfig(CamelModel):
    """When a model that failed for a transient cause is tried again (`gpufleet_worker.modelretry`)."""

    first_seconds: float = Field(default=30.0, gt=0, description="The wait after the first failure.")
    max_seconds: float = Field(
        default=600.0, gt=0, description="The longest wait; each one doubles up to it."
    )

    @model_validator(mode="after")
    def _longest_not_below_first(self) -> ModelRetryConfig:
        if self.max_seconds < self.first_seconds:
            raise ValueError(
                f"modelRetry.maxSeconds ({self.max_seconds}) must be >= modelRetry.firstSeconds "
                f"({self.first_seconds})"
            )
        return self


class SimulatedGpu(CamelModel):
    """What the worker reports when NVML finds no GPU, so CPU runs keep the same accounting."""

    product: str = "Simulated-GPU"
    memory: Bytes = Field(default=16 * 2**30, gt=0)
    count: int = Field(default=1, ge=1, le=16)


class S3Config(CamelModel):
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    region: str = "us-east-1"
    access_key_id: str | None = Field(default=None, exclude=True, repr=False)
    secret_access_key: str | None = Field(default=None, exclude=True, repr=False)


class ImageFetchConfig(CamelModel):
    max_bytes: Bytes = Field(default=20 * 2**20, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    allowed_networks: list[str] = Field(
        default_factory=list,
        description=(
            "CIDRs that input images may come from even though they are private, loopback or "
            "link-local. Empty: only public addresses."
        ),
    )

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as error:
                raise ValueError(f"allowedNetworks entry {network!r}: {error}") from None
        return networks


class WorkerConfig(CamelModel):
    name: str = Field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token_file: Path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_jobs_per_gpu: int = Field(default=4, ge=1, le=64)
    models: list[ModelSpec] = Field(min_length=1)
    simulated_gpu: SimulatedGpu = Field(default_factory=SimulatedGpu)
    s3: S3Config = Field(default_factory=S3Config)
    model_cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig)
    model_retry: ModelRetryConfig = Field(default_factory=ModelRetryConfig)
    # claim -> where it is mounted; a claim not listed is read at pvc_mount_path(claim)
    pvc_mounts: dict[str, Path] = Field(default_factory=dict)
    local_output_root: Path | None = None
    image_fetch: ImageFetchConfig = Field(default_factory=ImageFetchConfig)
    keep_finished_jobs: int = Field(default=1000, ge=1)
    # The largest submit is a few tens of KiB (two 4000-character prompts, three URLs).
    max_request_bytes: Bytes = Field(default=2**20, gt=0, le=2**30)

    @model_validator(mode="after")
    def _unique_model_names(self) -> WorkerConfig:
        names = [model.name for model in self.models]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"models: names must be unique; repeated: {', '.join(duplicates)}")
        plain = {m.name for m in self.models if m.base is None and not m.source.startswith(BUILTIN_SCHEME)}
        if orphans := [
            m.name
            for m in self.models
            if m.base is not None and (m.base not in plain or m.source.startswith(BUILTIN_SCHEME))
        ]:
            raise ValueError(
                "models[].base must name another of the models, one with no base and not builtin://, "
                f"and a LoRA's own source is its weights' files; not so for: {', '.join(orphans)}"
            )
        downloaded = [m.name for m in self.models if m.source.startswith(S3_SCHEME)]
        if downloaded and self.model_cache.path is None:
            raise ValueError(
                f"modelCache.path is required to serve s3:// models ({', '.join(downloaded)}): "
                "they are downloaded there"
            )
        return self


def config_file_text(config: WorkerConfig) -> str:
    """The config as the worker reads it (JSON is YAML); credentials are never written."""
    return config.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must hold a mapping, not {type(data).__name__}")
    return data


MODEL_FLAG_FORM = "name=...,source=...,vram=...[,tasks=a+b][,preload=true][,digest=sha256:...][,base=MODEL]"


def parse_model_flag(flag: str) -> dict[str, Any]:
    """``name=tiny-sd,source=builtin://tiny-sd,vram=512Mi[,tasks=a+b][,preload=true][,digest=sha256:...]``
    ``[,base=MODEL]`` as a
    ModelSpec mapping."""
    fields: dict[str, Any] = {}
    for part in flag.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in {"name", "source", "vram", "tasks", "preload", "digest", "base"}:
            raise ValueError(f"--model {flag!r}: expected {MODEL_FLAG_FORM} (got {part!r})")
        if key == "preload" and value not in {"true", "false"}:
            raise ValueError(f"--model {flag!r}: preload must be true or false (got {value!r})")
        fields[key] = value.split("+") if key == "tasks" else value == "true" if key == "preload" else value
    return fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpufleet-worker", description="gpufleet GPU worker: HTTP API over a GPU."
    )
    parser.add_argument("--config", type=Path, help="YAML or JSON config file")
    parser.add_argument("--name", help="worker name (default $POD_NAME or host name)")
    parser.add_argument("--host", help="address to listen on, e.g. $(POD_IP)")
    parser.add_argument("--port", type=int, help="port to listen on")
    parser.add_argument("--token-file", type=Path, help="file holding the pool's bearer token")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-jobs-per-gpu", type=int)
    parser.add_argument(
        "--model",
        action="append",
        help="a model to serve (repeatable; replaces the file's models)",
    )
    parser.add_argument("--simulated-gpu-product")
    parser.add_argument("--simulated-gpu-memory", help="e.g. 16Gi")
    parser.add_argument("--simulated-gpu-count", type=int)
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL")
    parser.add_argument("--model-cache", type=Path, help="directory s3:// models are downloaded into")
    parser.add_argument("--model-cache-size", help="bytes the model cache may hold, e.g. 50Gi")
    parser.add_argument(
        "--pvc-mount",
        action="append",
        metavar="CLAIM=DIR",
        help=f"where a PersistentVolumeClaim is mounted (repeatable; default {pvc_mount_path('CLAIM')})",
    )
    parser.add_argument("--local-output-root", type=Path, help="allow file:/// outputs here")
    parser.add_argument(
        "--allow-image-network",
        action="append",
        metavar="CIDR",
        help="let input images come from this private network (repeatable)",
    )
    parser.add_argument("--image-max-bytes", help="largest input image, e.g. 20Mi")
    parser.add_argument("--max-request-bytes", help="largest request body, e.g. 1Mi (default)")
    return parser


def load_config(argv: list[str] | None = None, env: dict[str, str] | None = None) -> WorkerConfig:
    """Config from the file, then the environment, then flags. Raises ValueError/ValidationError."""
    env = dict(os.environ) if env is None else env
    args = build_parser().parse_args(argv)
    config_path = args.config
    if config_path is None and env.get("GPUFLEET_WORKER_CONFIG"):
        config_path = Path(env["GPUFLEET_WORKER_CONFIG"])
    data: dict[str, Any] = _read_file(config_path) if config_path else {}

    s3 = dict(data.get("s3") or {})
    simulated = dict(data.get("simulatedGpu") or data.get("simulated_gpu") or {})
    image_fetch = dict(data.get("imageFetch") or data.get("image_fetch") or {})
    model_cache = dict(data.get("modelCache") or data.get("model_cache") or {})
    pvc_mounts = dict(data.get("pvcMounts") or data.get("pvc_mounts") or {})
    if env.get("POD_NAME") and "name" not in data:
        data["name"] = env["POD_NAME"]
    # Set by a simulated device plugin (the local cluster's kubelet) the way the NVIDIA
    # container runtime exposes real GPUs: the node's GPU class, for CPU-only machines.
    for key, variable in (
        ("product", "GPUFLEET_SIMULATED_GPU_PRODUCT"),
        ("memory", "GPUFLEET_SIMULATED_GPU_MEMORY"),
        ("count", "GPUFLEET_SIMULATED_GPU_COUNT"),
    ):
        if env.get(variable):
            simulated[key] = env[variable]
    if env.get("GPUFLEET_S3_ENDPOINT"):
        s3["endpointUrl"] = env["GPUFLEET_S3_ENDPOINT"]
    if env.get("AWS_REGION"):
        s3["region"] = env["AWS_REGION"]
    s3["accessKeyId"] = env.get("AWS_ACCESS_KEY_ID")
    s3["secretAccessKey"] = env.get("AWS_SECRET_ACCESS_KEY")

    flags: dict[str, Any] = {
        "name": args.name,
        "host": args.host,
        "port": args.port,
        "tokenFile": args.token_file,
        "device": args.device,
        "maxJobsPerGpu": args.max_jobs_per_gpu,
        "localOutputRoot": args.local_output_root,
        "maxRequestBytes": args.max_request_bytes,
        "models": [parse_model_flag(m) for m in args.model] if args.model else None,
    }
    data.update({key: value for key, value in flags.items() if value is not None})
    for key, value in {
        "product": args.simulated_gpu_product,
        "memory": args.simulated_gpu_memory,
        "count": args.simulated_gpu_count,
    }.items():
        if value is not None:
            simulated[key] = value
    if args.s3_endpoint:
        s3["endpointUrl"] = args.s3_endpoint
    if args.allow_image_network:
        image_fetch["allowedNetworks"] = args.allow_image_network
    if args.image_max_bytes:
        image_fetch["maxBytes"] = args.image_max_bytes
    if args.model_cache:
        model_cache["path"] = args.model_cache
    if args.model_cache_size:
        model_cache["capacity"] = args.model_cache_size
    for mount in args.pvc_mount or []:
        claim, sep, directory = mount.partition("=")
        if not sep or not claim or not directory:
            raise ValueError(f"--pvc-mount {mount!r}: expected CLAIM=DIR")
        pvc_mounts[claim] = directory
    for snake in ("simulated_gpu", "image_fetch", "model_cache", "pvc_mounts"):
        data.pop(snake, None)
    data.update(
        {
            "s3": s3,
            "simulatedGpu": simulated,
            "imageFetch": image_fetch,
            "modelCache": model_cache,
            "pvcMounts": pvc_mounts,
        }
    )
    return WorkerConfig.model_validate(data)
