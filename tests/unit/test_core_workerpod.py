"""The worker Pod manifest (gpufleet.core.workerpod): a valid Pod, GPUs and VRAM-aware scheduling,
safe template overrides, and nothing that gives a pool author more than a restricted pod."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client

from gpufleet import labels
from gpufleet.api import testing
from gpufleet.api.models import API_VERSION, Affinity, WorkerPool, WorkerPoolSpec
from gpufleet.api.quantity import parse_quantity
from gpufleet.core import workerpod
from gpufleet.core.workerpod import WorkerEnv, min_memory_bytes, pod_labels, selector, worker_pod

MiB = 2**20
GiB = 2**30
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workerpool.yaml"
CLASSES_MIB = [15360, 16384, 24576, 40960, 81920]
ENV = WorkerEnv(s3_endpoint="http://s3.storage:9000", s3_credentials_secret="s3-credentials")
# Pod Security Standards, restricted profile: the volume types it allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pool(spec: dict[str, Any] | WorkerPoolSpec | None = None, name: str = "sd15") -> WorkerPool:
    if spec is None:
        spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    if isinstance(spec, WorkerPoolSpec):
        spec = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return WorkerPool.model_validate(
        {"metadata": {"name": name, "namespace": "studio", "uid": "0d3f-uid", "generation": 3}, "spec": spec}
    )


def example_spec(**template: Any) -> dict[str, Any]:
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec["template"].update(template)
    return spec


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


def required_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    node = pod["spec"]["affinity"]["nodeAffinity"]
    return node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


def as_v1_pod(manifest: dict[str, Any]) -> client.V1Pod:
    """The manifest through the Kubernetes client's Pod model, as the API server's JSON."""
    return client.ApiClient().deserialize(json.dumps(manifest), "V1Pod", "application/json")


def walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) in a JSON document."""
    found = [(path, value)]
    if isinstance(value, dict):
        for key, child in value.items():
            found += walk(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += walk(child, f"{path}[{index}]")
    return found


def selected_by(requirement: dict[str, Any], node_labels: dict[str, str]) -> bool:
    """A node selector requirement as the scheduler reads it (the operators used here)."""
    value = node_labels.get(requirement["key"])
    if value is None:
        return False
    match requirement["operator"]:
        case "In":
            return value in requirement["values"]
        case "Gt":
            return int(value) > int(requirement["values"][0])
    raise AssertionError(requirement)


# --- the example pool -------------------------------------------------------------------------


def test_example_pool_gives_a_valid_pod_with_gpus_token_and_owner() -> None:
    wp = pool()
    manifest = worker_pod(wp, "sd15-0", CLASSES_MIB, ENV)
    parsed = as_v1_pod(manifest)
    assert client.ApiClient().sanitize_for_serialization(parsed) == manifest  # no unknown or mistyped field
    assert manifest["metadata"]["name"] == "sd15-0" and manifest["metadata"]["namespace"] == "studio"
    assert manifest["spec"]["automountServiceAccountToken"] is False
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True
    worker = container(manifest)
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["resources"]["requests"] == {"cpu": "2", "memory": "8Gi", labels.GPU_RESOURCE: "1"}
    assert worker["resources"]["limits"] == {labels.GPU_RESOURCE: "1"}
    assert manifest["metadata"]["ownerReferences"] == [
        {
            "apiVersion": API_VERSION,
            "kind": "WorkerPool",
            "name": "sd15",
            "uid": "0d3f-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    token = next(v for v in manifest["spec"]["volumes"] if v["name"] == "token")
    assert token["secret"]["secretName"] == workerpod.token_secret_name("sd15") == "sd15-worker-token"
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "token")
    assert mount == {"name": "token", "mountPath": workerpod.TOKEN_DIR, "readOnly": True}
    args = worker["args"]
    assert args[args.index("--token-file") + 1] == f"{workerpod.TOKEN_DIR}/{workerpod.TOKEN_KEY}"
    assert args[args.index("--max-jobs-per-gpu") + 1] == "4"
    assert "name=tiny-sd,source=builtin://tiny-sd,vram=2Gi" in args
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = {e["name"]: e for e in worker["env"]}
    assert env["GPUFLEET_S3_ENDPOINT"]["value"] == "http://s3.storage:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert env["LOG_LEVEL"]["value"] == "info"


def test_without_s3_settings_no_s3_env() -> None:
    env = {e["name"] for e in container(worker_pod(pool(), "sd15-0", CLASSES_MIB, WorkerEnv()))["env"]}
    assert env == {"POD_NAME", "POD_IP", "LOG_LEVEL"}


def test_required_affinity_needs_the_vram_and_prefers_the_smallest_sufficient_class() -> None:
    manifest = worker_pod(pool(), "sd15-0", CLASSES_MIB, ENV)
    assert required_terms(manifest) == [
        {"matchExpressions": [{"key": labels.GPU_MEMORY_MIB, "operator": "Gt", "values": ["16383"]}]}
    ]
    preferred = manifest["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    # 15360 MiB is below the pool's 16Gi: not a candidate at all; then smallest first.
    assert [(p["weight"], p["preference"]["matchExpressions"][0]["values"]) for p in preferred] == [
        (100, ["16384"]),
        (90, ["24576"]),
        (80, ["40960"]),
        (70, ["81920"]),
    ]


def test_product_allow_list_is_required() -> None:
    spec = example_spec()
    spec["gpu"]["products"] = ["NVIDIA-L4", "NVIDIA-A10G"]
    (term,) = required_terms(worker_pod(pool(spec), "sd15-0", CLASSES_MIB, ENV))
    assert {"key": labels.GPU_PRODUCT, "operator": "In", "values": ["NVIDIA-L4", "NVIDIA-A10G"]} in term[
        "matchExpressions"
    ]


def test_several_gpus_per_worker_are_requested_and_limited() -> None:
    spec = example_spec()
    spec["gpu"]["count"] = 4
    resources = container(worker_pod(pool(spec), "sd15-0", CLASSES_MIB, ENV))["resources"]
    assert resources["requests"][labels.GPU_RESOURCE] == resources["limits"][labels.GPU_RESOURCE] == "4"


def test_min_memory_defaults_to_the_largest_model() -> None:
    spec = example_spec()
    del spec["gpu"]["minMemory"]
    spec["models"].append({"name": "big", "source": "builtin://big", "vram": "20000Mi"})
    wp = pool(spec)
    assert min_memory_bytes(wp) == 20000 * MiB
    (term,) = required_terms(worker_pod(wp, "sd15-0", CLASSES_MIB, ENV))
    assert term["matchExpressions"] == [{"key": labels.GPU_MEMORY_MIB, "operator": "Gt", "values": ["19999"]}]


def test_user_node_selector_terms_are_anded_with_the_gpu_needs() -> None:
    user: dict[str, Any] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}]},
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 5,
                "preference": {"matchExpressions": [{"key": "spot", "operator": "In", "values": ["no"]}]},
            }
        ],
    }
    anti: dict[str, Any] = {"preferredDuringSchedulingIgnoredDuringExecution": []}
    spec = example_spec(affinity={"nodeAffinity": user, "podAntiAffinity": anti})
    wp = pool(spec)
    manifest = worker_pod(wp, "sd15-0", CLASSES_MIB, ENV)
    as_v1_pod(manifest)
    ours = {"key": labels.GPU_MEMORY_MIB, "operator": "Gt", "values": ["16383"]}
    assert required_terms(manifest) == [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}, ours]},
        {
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}],
            "matchExpressions": [ours],
        },
    ]
    preferred = manifest["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[-1] == user["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert manifest["spec"]["affinity"]["podAntiAffinity"] == anti
    # The pool's own spec is left as it was (the terms were copied, not extended in place).
    assert wp.spec.template.affinity is not None
    assert wp.spec.template.affinity.node_affinity == user


def test_template_labels_cannot_take_over_the_selector_labels() -> None:
    spec = example_spec(labels={"app.kubernetes.io/name": "something-else", "team": "studio"})
    meta = worker_pod(pool(spec), "sd15-0", CLASSES_MIB, ENV)["metadata"]
    assert meta["labels"] == {
        "team": "studio",
        "app.kubernetes.io/name": workerpod.WORKER_APP,
        labels.POOL: "sd15",
        labels.WORKER: "sd15-0",
    }
    assert selector("sd15") == f"app.kubernetes.io/name={workerpod.WORKER_APP},{labels.POOL}=sd15"
    assert pod_labels("sd15").items() <= meta["labels"].items()


def test_safe_overrides_are_passed_through() -> None:
    spec = example_spec(
        nodeSelector={"topology.kubernetes.io/zone": "eu-1a"},
        annotations={"example.com/cost-center": "42"},
        priorityClassName="batch-high",
        runtimeClassName="nvidia",
        env=[{"name": "HF_HOME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        resources={"requests": {"cpu": "4"}, "limits": {"memory": "32Gi"}},
    )
    manifest = worker_pod(pool(spec), "sd15-0", CLASSES_MIB, ENV)
    as_v1_pod(manifest)
    pod_spec = manifest["spec"]
    assert pod_spec["nodeSelector"] == {"topology.kubernetes.io/zone": "eu-1a"}
    assert pod_spec["priorityClassName"] == "batch-high"
    assert pod_spec["runtimeClassName"] == "nvidia"
    assert manifest["metadata"]["annotations"] == {"example.com/cost-center": "42"}
    assert {"key": labels.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]
    env = container(manifest)["env"]
    assert {"name": "HF_HOME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in env
    resources = container(manifest)["resources"]
    assert resources["requests"] == {"cpu": "4", labels.GPU_RESOURCE: "1"}
    assert resources["limits"] == {"memory": "32Gi", labels.GPU_RESOURCE: "1"}


@pytest.mark.parametrize(
    "template",
    [
        {"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]},
        {"env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]},
        {"resources": {"limits": {labels.GPU_RESOURCE: "8"}}},
        {"labels": {labels.POOL: "other"}},
        {"serviceAccountName": "admin"},
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        {"securityContext": {"privileged": True}},
        {"hostNetwork": True},
    ],
)
def test_unsafe_overrides_never_reach_the_pod(template: dict[str, Any]) -> None:
    """The pool model refuses them, so no worker pod is ever built from them."""
    with pytest.raises(ValueError):
        pool(example_spec(**template))


# --- properties over every valid pool ---------------------------------------------------------


USER_NODE_AFFINITIES: list[dict[str, Any] | None] = [
    None,
    {},
    {"requiredDuringSchedulingIgnoredDuringExecution": {}},
    {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]},
                {"matchExpressions": [{"key": "spot", "operator": "DoesNotExist"}], "matchFields": []},
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
        ],
    },
]


@st.composite
def pools(draw: st.DrawFn) -> WorkerPool:
    """Valid pools from the CRD schema, with node affinities and product lists drawn more often
    than the schema walk draws them."""
    spec = draw(testing.pool_specs())
    template = spec.template
    # The schema keeps affinities as written and the walk fills them with a node affinity's
    # shape, which is no valid pod (anti-)affinity: pod affinities are left out here.
    node_affinity = draw(st.sampled_from(USER_NODE_AFFINITIES))
    if draw(st.booleans()) and template.affinity is not None:
        node_affinity = template.affinity.node_affinity
    template.affinity = (
        None if node_affinity is None else Affinity(node_affinity=copy.deepcopy(node_affinity))
    )
    spec.gpu.products = draw(st.sampled_from([[], ["NVIDIA-L4"], ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"]]))
    return pool(spec, name=draw(st.sampled_from(["sd15", "a", "x" * 52])))


classes_mib = st.lists(st.integers(1, 200_000), max_size=12)
# Drawing a pool from the schema is slow, and shrinking one took minutes on a 2-core runner:
# these tests report the failing pool as drawn.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=40, deadline=None, phases=NO_SHRINK)
@given(wp=pools(), gpu_classes=classes_mib)
def test_every_pool_gives_a_valid_restricted_pod(wp: WorkerPool, gpu_classes: list[int]) -> None:
    manifest = worker_pod(wp, f"{wp.metadata['name']}-0", gpu_classes, ENV)
    assert client.ApiClient().sanitize_for_serialization(as_v1_pod(manifest)) == manifest
    spec = manifest["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec and "serviceAccount" not in spec
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers", "nodeName"):
        assert key not in spec
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES, volume
        assert "serviceAccountToken" not in json.dumps(volume)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsUser"] != 0
    worker = container(manifest)
    assert worker["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    paths = walk(manifest)
    for path, value in paths:
        last = path.rsplit(".", 1)[-1]
        assert last not in {"privileged", "hostPath", "procMount", "add", "hostPort"}, path
        if last == "name" and ".env[" in path:
            assert value not in {"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"}, path
    env_names = [e["name"] for e in worker["env"]]
    assert not [n for n in env_names if n.startswith("NVIDIA_")]


@settings(max_examples=40, deadline=None, phases=NO_SHRINK)
@given(wp=pools(), gpu_classes=classes_mib)
def test_every_pool_gets_its_gpus_vram_affinity_owner_and_labels(
    wp: WorkerPool, gpu_classes: list[int]
) -> None:
    name = f"{wp.metadata['name']}-3"
    manifest = worker_pod(wp, name, gpu_classes, ENV)
    gpu = wp.spec.gpu
    resources = container(manifest)["resources"]
    assert (
        resources["requests"][labels.GPU_RESOURCE]
        == resources["limits"][labels.GPU_RESOURCE]
        == str(gpu.count)
    )

    needed = min_memory_bytes(wp)
    if gpu.min_memory is not None:
        assert needed == parse_quantity(gpu.min_memory).value()
    else:
        assert needed == max(parse_quantity(m.vram).value() for m in wp.spec.models)
    terms = required_terms(manifest)
    user = wp.spec.template.affinity.node_affinity if wp.spec.template.affinity else None
    user_terms = ((user or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms"
    ) or [{}]
    assert len(terms) == len(user_terms)
    for term, theirs in zip(terms, user_terms, strict=True):
        # Every term keeps the user's requirements and adds ours: GPU needs hold whichever matches.
        assert term["matchExpressions"][: len(theirs.get("matchExpressions", []))] == theirs.get(
            "matchExpressions", []
        )
        ours = term["matchExpressions"][len(theirs.get("matchExpressions", [])) :]
        for memory_mib in (1, 15360, 16384, 24576, 81920, 200_000):
            node = {labels.GPU_MEMORY_MIB: str(memory_mib), labels.GPU_PRODUCT: (gpu.products or ["any"])[0]}
            assert all(selected_by(r, node) for r in ours) == (memory_mib * MiB >= needed)
        if gpu.products:
            outsider = {labels.GPU_MEMORY_MIB: "200000", labels.GPU_PRODUCT: "Not-An-Allowed-GPU"}
            if "Not-An-Allowed-GPU" not in gpu.products:
                assert not all(selected_by(r, outsider) for r in ours)

    preferred = manifest["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    ours_preferred = [
        p for p in preferred if p["preference"]["matchExpressions"][0]["key"] == labels.GPU_MEMORY_MIB
    ]
    offered = [int(p["preference"]["matchExpressions"][0]["values"][0]) for p in ours_preferred]
    sufficient = sorted({c for c in gpu_classes if c * MiB >= needed})
    assert offered == sufficient[:10]  # smallest first ...
    weights = [p["weight"] for p in ours_preferred]
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == len(weights)  # ... weighs most
    assert all(1 <= p["weight"] <= 100 for p in preferred)

    meta = manifest["metadata"]
    assert meta["ownerReferences"][0]["uid"] == wp.metadata["uid"]
    assert meta["ownerReferences"][0]["controller"] is True
    assert pod_labels(wp.metadata["name"]).items() <= meta["labels"].items()
    assert meta["labels"][labels.WORKER] == name
    assert {k: v for k, v in meta["labels"].items() if k not in pod_labels(wp.metadata["name"])} == {
        **{k: v for k, v in wp.spec.template.labels.items() if k not in pod_labels(wp.metadata["name"])},
        labels.WORKER: name,
    }


@settings(max_examples=20, deadline=None, phases=NO_SHRINK)
@given(wp=pools())
def test_the_pod_shares_no_mutable_state_with_the_pool(wp: WorkerPool) -> None:
    before = copy.deepcopy(wp.model_dump())
    first = worker_pod(wp, "p-0", CLASSES_MIB, ENV)
    second = copy.deepcopy(worker_pod(wp, "p-0", CLASSES_MIB, ENV))
    for _, value in walk(first):  # scribble over every container in the first manifest
        if isinstance(value, dict):
            value["scribbled"] = True
        elif isinstance(value, list):
            value.append("scribbled")
    assert worker_pod(wp, "p-0", CLASSES_MIB, ENV) == second
    assert wp.model_dump() == before


def test_declared_model_tasks_reach_the_worker_config() -> None:
    """models[].tasks travel in the --model flag, so a worker whose directory holds another
    kind of model refuses to start it instead of taking jobs it cannot do."""
    from gpufleet_worker.config import load_config

    spec = example_spec()
    spec["runtime"] = "diffusers"
    spec["tasks"] = ["segment", "caption"]
    spec["models"] = [
        {"name": "sam", "source": "file:///models/sam", "vram": "1Gi", "tasks": ["segment"]},
        {"name": "llava", "source": "file:///models/llava", "vram": "8Gi", "preload": True},
    ]
    args = workerpod.worker_args(pool(spec))
    models = [args[i + 1] for i, a in enumerate(args) if a == "--model"]
    assert models == [
        "name=sam,source=file:///models/sam,vram=1Gi,tasks=segment",
        "name=llava,source=file:///models/llava,vram=8Gi,preload=true",
    ]
    config = load_config(["--token-file", "/run/token", *[x for m in models for x in ("--model", m)]], env={})
    assert [(m.name, m.tasks, m.preload) for m in config.models] == [
        ("sam", ["segment"], False),
        ("llava", None, True),
    ]


def test_pvc_and_s3_models_get_a_read_only_claim_and_a_bounded_model_cache() -> None:
    """Each claim once, read-only, where the worker reads it; s3:// models a cache volume of
    spec.modelCache.size that the worker is told to stay within."""
    from gpufleet.api.servedmodels import MODEL_CACHE_PATH, pvc_mount_path
    from gpufleet_worker.config import load_config

    digest = "sha256:" + "ab" * 32
    spec = example_spec()
    spec["runtime"] = "diffusers"
    spec["modelCache"] = {"size": "20Gi"}
    spec["models"] = [
        {"name": "sd15", "source": "pvc://weights/sd15", "vram": "3Gi", "digest": digest},
        {"name": "sd21", "source": "pvc://weights/sd21", "vram": "3Gi"},
        {"name": "xl", "source": "pvc://more-weights/xl", "vram": "8Gi"},
        {"name": "dream", "source": "s3://models/dreamshaper", "vram": "3Gi"},
    ]
    manifest = worker_pod(pool(spec), "sd15-0", CLASSES_MIB, ENV)
    volumes = {v["name"]: v for v in manifest["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(manifest)["volumeMounts"]}
    assert [volumes[f"claim-{i}"]["persistentVolumeClaim"] for i in range(2)] == [
        {"claimName": "more-weights", "readOnly": True},
        {"claimName": "weights", "readOnly": True},
    ]
    assert [(mounts[f"claim-{i}"]["mountPath"], mounts[f"claim-{i}"]["readOnly"]) for i in range(2)] == [
        (pvc_mount_path("more-weights"), True),
        (pvc_mount_path("weights"), True),
    ]
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": "20Gi"}}
    assert mounts["model-cache"]["mountPath"] == MODEL_CACHE_PATH
    assert client.ApiClient().sanitize_for_serialization(as_v1_pod(manifest)) == manifest

    config = load_config(container(manifest)["args"], env={})
    assert config.model_cache.path == Path(MODEL_CACHE_PATH) and config.model_cache.capacity == 20 * GiB
    assert config.pvc_mounts == {c: Path(pvc_mount_path(c)) for c in ("more-weights", "weights")}
    assert [m.digest for m in config.models] == [digest, None, None, None]


def test_pools_of_local_models_get_no_claims_or_cache() -> None:
    manifest = worker_pod(pool(), "sd15-0", CLASSES_MIB, ENV)
    assert {v["name"] for v in manifest["spec"]["volumes"]} == {"token", "tmp"}
    assert "--model-cache" not in container(manifest)["args"]


def test_a_lora_reaches_the_worker_naming_its_base_model() -> None:
    """A LoRA model names its base; the worker attaches it to its own copy of that model."""
    from gpufleet.api.capabilities import LORA_TASKS, model_tasks
    from gpufleet.api.inputs import Task
    from gpufleet.api.models import Runtime
    from gpufleet_worker.config import load_config

    spec = example_spec()
    spec["runtime"] = "diffusers"
    spec["tasks"] = ["text-to-image", "train"]
    spec["models"] = [
        {"name": "sd15", "source": "file:///models/sd15", "vram": "3Gi"},
        {"name": "style", "source": "file:///models/loras/style.safetensors", "vram": "3Gi", "base": "sd15"},
    ]
    wp = pool(spec)
    args = workerpod.worker_args(wp)
    models = [args[i + 1] for i, a in enumerate(args) if a == "--model"]
    assert models[1] == ("name=style,source=file:///models/loras/style.safetensors,vram=3Gi,base=sd15")
    config = load_config(["--token-file", "/run/token", *[x for m in models for x in ("--model", m)]], env={})
    assert [(m.name, m.base) for m in config.models] == [("sd15", None), ("style", "sd15")]
    base, lora = wp.spec.models
    assert Task.TRAIN in model_tasks(Runtime.DIFFUSERS, base)
    assert model_tasks(Runtime.DIFFUSERS, lora) == LORA_TASKS


def test_a_lora_and_its_base_may_come_from_s3() -> None:
    """The worker loads a LoRA's base as any model, so neither needs a file:/// source."""
    spec = example_spec()
    spec["runtime"] = "diffusers"
    spec["tasks"] = ["text-to-image"]
    spec["models"] = [
        {"name": "sd15", "source": "s3://models/sd15/", "vram": "3Gi"},
        {"name": "style", "source": "s3://models/loras/style/", "vram": "64Mi", "base": "sd15"},
    ]
    args = workerpod.worker_args(pool(spec))
    models = [args[i + 1] for i, a in enumerate(args) if a == "--model"]
    assert models[1] == "name=style,source=s3://models/loras/style/,vram=64Mi,base=sd15"
