"""A WorkerPool's worker pod: GPU requests, VRAM-aware node affinity, restricted security.

Pure: the pool and the GPU classes the cluster has go in, a Pod manifest comes out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from gpufleet import labels
from gpufleet.api.models import API_VERSION, Runtime, WorkerPool
from gpufleet.api.quantity import parse_quantity
from gpufleet.api.servedmodels import MODEL_CACHE_PATH, PVC_SCHEME, S3_SCHEME, pvc_claim, pvc_mount_path

WORKER_PORT = 8080
WORKER_APP = "gpufleet-worker"
TOKEN_DIR = "/var/run/gpufleet/token"
TOKEN_KEY = "token"
MIB = 2**20
MODEL_CACHE_VOLUME = "model-cache"


@dataclass(frozen=True)
class WorkerEnv:
    """Operator-wide settings every worker pod gets (from the operator's flags)."""

    s3_endpoint: str | None = None
    s3_credentials_secret: str | None = None  # in the pool's namespace; keys AWS_ACCESS_KEY_ID/_SECRET_


def token_secret_name(pool: str) -> str:
    return f"{pool}-worker-token"


def pod_labels(pool: str) -> dict[str, str]:
    """The labels that select a pool's worker pods (also the scale subresource's selector)."""
    return {labels.POOL: pool, "app.kubernetes.io/name": WORKER_APP}


def selector(pool: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(pod_labels(pool).items()))


def min_memory_bytes(pool: WorkerPool) -> int:
    """VRAM each GPU must have: gpu.minMemory, else the largest model's vram."""
    gpu = pool.spec.gpu
    if gpu.min_memory is not None:
        return parse_quantity(gpu.min_memory).value()
    return max(parse_quantity(m.vram).value() for m in pool.spec.models)


def gpu_requirements(pool: WorkerPool) -> list[dict[str, Any]]:
    """Node selector requirements: enough VRAM per GPU (GFD reports MiB), allowed products."""
    needed_mib = -(-min_memory_bytes(pool) // MIB)
    requirements: list[dict[str, Any]] = [
        {"key": labels.GPU_MEMORY_MIB, "operator": "Gt", "values": [str(needed_mib - 1)]},
    ]
    if pool.spec.gpu.products:
        requirements.append(
            {"key": labels.GPU_PRODUCT, "operator": "In", "values": list(pool.spec.gpu.products)}
        )
    return requirements


def smallest_class_preferences(pool: WorkerPool, gpu_classes_mib: list[int]) -> list[dict[str, Any]]:
    """Preferred terms that favour the smallest GPU class that suffices, then the next...

    ``gpu_classes_mib`` are the ``nvidia.com/gpu.memory`` values the cluster's nodes carry;
    each sufficient class gets a term, smaller classes a higher weight, so an 80 GiB card
    is only used for 16 GiB work when the smaller cards are taken.
    """
    needed_mib = -(-min_memory_bytes(pool) // MIB)
    sufficient = sorted({c for c in gpu_classes_mib if c >= needed_mib})
    terms = []
    for rank, memory in enumerate(sufficient[:10]):
        terms.append(
            {
                "weight": 100 - rank * 10,
                "preference": {
                    "matchExpressions": [
                        {"key": labels.GPU_MEMORY_MIB, "operator": "In", "values": [str(memory)]}
                    ]
                },
            }
        )
    return terms


def _affinity(pool: WorkerPool, gpu_classes_mib: list[int]) -> dict[str, Any]:
    template = pool.spec.template.affinity
    affinity: dict[str, Any] = {}
    if template is not None:
        for key, value in (
            ("podAffinity", template.pod_affinity),
            ("podAntiAffinity", template.pod_anti_affinity),
        ):
            if value:
                affinity[key] = copy.deepcopy(value)
    user_node = copy.deepcopy(template.node_affinity) if template and template.node_affinity else {}
    ours = gpu_requirements(pool)
    required = user_node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or [{}]
    # Node selector terms are ORed: our GPU needs must hold in every one of them.
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), *ours]
    affinity["nodeAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            *smallest_class_preferences(pool, gpu_classes_mib),
            *(user_node.get("preferredDuringSchedulingIgnoredDuringExecution") or []),
        ],
    }
    return affinity


def claims(pool: WorkerPool) -> list[str]:
    """The PersistentVolumeClaims the pool's pvc:// models are read from, sorted."""
    return sorted({pvc_claim(m.source)[0] for m in pool.spec.models if m.source.startswith(PVC_SCHEME)})


def downloads_models(pool: WorkerPool) -> bool:
    """Whether the workers download models (s3://) into a model cache volume."""
    return any(m.source.startswith(S3_SCHEME) for m in pool.spec.models)


def model_volumes(pool: WorkerPool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volumes and mounts the pool's models need: each claim read-only, and the model cache."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, claim in enumerate(claims(pool)):
        name = f"claim-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": pvc_mount_path(claim), "readOnly": True})
    if downloads_models(pool):
        size = str(pool.spec.model_cache.size)
        volumes.append({"name": MODEL_CACHE_VOLUME, "emptyDir": {"sizeLimit": size}})
        mounts.append({"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_PATH})
    return volumes, mounts


def worker_args(pool: WorkerPool) -> list[str]:
    args = [
        "--host",
        "$(POD_IP)",
        "--port",
        str(WORKER_PORT),
        "--token-file",
        f"{TOKEN_DIR}/{TOKEN_KEY}",
        "--max-jobs-per-gpu",
        str(pool.spec.gpu.max_jobs_per_gpu),
    ]
    for model in pool.spec.models:
        flag = f"name={model.name},source={model.source},vram={model.vram}"
        if model.tasks is not None:  # the worker then refuses to start a model that cannot do them
            flag += ",tasks=" + "+".join(t.value for t in model.tasks)
        if model.preload:
            flag += ",preload=true"
        if model.digest is not None:
            flag += f",digest={model.digest}"
        if model.base is not None:  # a LoRA: the worker attaches it to its copy of the base
            flag += f",base={model.base}"
        args += ["--model", flag]
    if pool.spec.runtime is Runtime.CUSTOM:
        return args  # its own flags: it finds the volumes at their documented paths
    for claim in claims(pool):
        args += ["--pvc-mount", f"{claim}={pvc_mount_path(claim)}"]
    if downloads_models(pool):
        args += ["--model-cache", MODEL_CACHE_PATH, "--model-cache-size", str(pool.spec.model_cache.size)]
    return args


def worker_pod(pool: WorkerPool, name: str, gpu_classes_mib: list[int], env: WorkerEnv) -> dict[str, Any]:
    """The manifest of worker pod ``name`` of ``pool``."""
    meta, spec, template = pool.metadata, pool.spec, pool.spec.template
    pool_name = meta["name"]
    container_env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if env.s3_endpoint:
        container_env.append({"name": "GPUFLEET_S3_ENDPOINT", "value": env.s3_endpoint})
    if env.s3_credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            container_env.append(
                {"name": key, "valueFrom": {"secretKeyRef": {"name": env.s3_credentials_secret, "key": key}}}
            )
    container_env += [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in template.env]
    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    if template.resources is not None:
        resources["requests"].update({k: str(v) for k, v in template.resources.requests.items()})
        resources["limits"].update({k: str(v) for k, v in template.resources.limits.items()})
    resources["limits"][labels.GPU_RESOURCE] = str(spec.gpu.count)
    resources["requests"][labels.GPU_RESOURCE] = str(spec.gpu.count)
    model_vols, model_mounts = model_volumes(pool)
    pod_spec: dict[str, Any] = {
        # Workers talk to nobody but the operator: no API credentials, no service links.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "worker",
                "image": spec.image,
                "command": ["gpufleet-worker"],
                "args": worker_args(pool),
                "env": container_env,
                "ports": [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}],
                "resources": resources,
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "http"},
                    "periodSeconds": 2,
                    "failureThreshold": 3,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 10,
                    "failureThreshold": 6,
                    "timeoutSeconds": 5,
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    *model_mounts,
                ],
            }
        ],
        "volumes": [
            {"name": "token", "secret": {"secretName": token_secret_name(pool_name), "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {}},
            *model_vols,
        ],
        "tolerations": [
            {"key": labels.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
            *[t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in template.tolerations],
        ],
        "affinity": _affinity(pool, gpu_classes_mib),
    }
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    if template.runtime_class_name:
        pod_spec["runtimeClassName"] = template.runtime_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**template.labels, **pod_labels(pool_name), labels.WORKER: name},
            "annotations": dict(template.annotations),
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "WorkerPool",
                    "name": pool_name,
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }
