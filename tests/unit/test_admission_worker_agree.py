"""What the API server admits, the worker accepts: model names, model sources and outputs.

The CRDs are read as generated (what the API server enforces), and the worker is given a
pool's models exactly as the operator hands them over (its ``--model`` flags).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gpufleet.api import crdgen, models, testing
from gpufleet.core.workerpod import WorkerEnv, worker_args, worker_pod
from gpufleet_worker.artifacts import ArtifactStore
from gpufleet_worker.config import ModelSpec, load_config
from gpufleet_worker.protocol import SubmitRequest

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def crd_schema(kind: str, *path: str) -> dict[str, Any]:
    for crd in crdgen.crds().values():
        if crd["spec"]["names"]["kind"] == kind:
            node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            for part in path:
                node = node["items"] if part == "[]" else node["properties"][part]
            return node
    raise KeyError(kind)


def admitted_strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= schema["maxLength"])


POOL_MODEL_NAME = crd_schema("WorkerPool", "spec", "models", "[]", "name")
JOB_MODEL_NAME = crd_schema("GenerationJob", "spec", "model")


@SETTINGS
@given(pool_name=admitted_strings(POOL_MODEL_NAME), job_name=admitted_strings(JOB_MODEL_NAME))
def test_every_model_name_the_crds_admit_the_worker_serves(pool_name: str, job_name: str) -> None:
    for name in (pool_name, job_name):
        ModelSpec(name=name, source="builtin://tiny-sd", vram="1Gi")


@SETTINGS
@given(spec=testing.pool_specs())
def test_every_pool_the_api_admits_gives_its_workers_a_config_they_start_with(
    spec: models.WorkerPoolSpec,
) -> None:
    # A custom image reads its own flags; the gpufleet worker serves builtin and diffusers pools.
    assume(spec.runtime is not models.Runtime.CUSTOM)
    pool = models.WorkerPool(metadata={"name": "pool", "namespace": "ns"}, spec=spec)
    config = load_config(worker_args(pool), env={})
    assert [(m.name, m.source, m.preload) for m in config.models] == [
        (m.name, m.source, m.preload) for m in spec.models
    ]


@pytest.mark.parametrize(
    ("model", "runtime", "rule"),
    [
        ({"name": "Tiny-SD"}, "builtin", "name"),
        ({"name": "stability/sdxl"}, "builtin", "name"),
        ({"source": "file:///models/a,b"}, "diffusers", "source"),
        ({"source": "pvc://weights/../sdxl"}, "diffusers", "pvc:// paths must not have '.' or '..' segments"),
        ({"source": "pvc://weights/./sdxl"}, "diffusers", "pvc:// paths must not have '.' or '..' segments"),
        ({"digest": "sha256:" + "0" * 64}, "builtin", "digest: builtin:// models have no files to check"),
    ],
)
def test_pools_whose_workers_would_refuse_their_models_are_refused(
    model: dict[str, str], runtime: str, rule: str
) -> None:
    source = "builtin://tiny-sd" if runtime == "builtin" else "file:///models/sdxl"
    served = {"name": "sdxl", "source": source, "vram": "8Gi"} | model
    spec = {"runtime": runtime, "image": "worker:dev", "models": [served], "tasks": ["text-to-image"]}
    with pytest.raises(ValidationError, match=rule):
        models.WorkerPoolSpec.model_validate(spec)


@pytest.mark.parametrize("source", ["s3://models/sdxl/", "pvc://weights/sdxl", "pvc://weights/"])
def test_s3_and_pvc_models_are_served_with_their_digest(source: str) -> None:
    digest = "sha256:" + "0" * 64
    spec = {
        "runtime": "diffusers",
        "image": "example.com/my-worker:1",
        "models": [{"name": "sdxl", "source": source, "vram": "8Gi", "digest": digest}],
        "tasks": ["text-to-image"],
    }
    pool = models.WorkerPool(
        metadata={"name": "pool", "namespace": "ns"}, spec=models.WorkerPoolSpec.model_validate(spec)
    )
    (served,) = load_config(worker_args(pool), env={}).models
    assert (served.source, served.digest) == (source, digest)


def test_custom_images_get_the_volumes_but_no_new_flags() -> None:
    """A custom image parses its own flags: it finds claims and the cache at their paths."""
    spec = {
        "runtime": "custom",
        "image": "example.com/my-worker:1",
        "models": [
            {"name": "a", "source": "s3://models/a", "vram": "8Gi"},
            {"name": "b", "source": "pvc://weights/b", "vram": "8Gi"},
        ],
        "tasks": ["text-to-image"],
    }
    pool = models.WorkerPool(
        metadata={"name": "pool", "namespace": "ns", "uid": "u"},
        spec=models.WorkerPoolSpec.model_validate(spec),
    )
    args = worker_args(pool)
    assert "--pvc-mount" not in args and "--model-cache" not in args
    pod = worker_pod(pool, "pool-0", [], WorkerEnv())
    assert {v["name"] for v in pod["spec"]["volumes"]} >= {"claim-0", "model-cache"}


UNWRITABLE_OUTPUTS = [
    "s3://169.254.169.254/latest/meta-data/",
    "s3://127.0.0.1/out",
    "s3://my..bucket/out/",
    "s3://my-.bucket/out/",
    "s3://bucket/studio/../../other/",
    "s3://bucket/./studio/",
    "s3://bucket/..",
]


@pytest.mark.parametrize("uri", UNWRITABLE_OUTPUTS)
def test_outputs_that_can_never_be_written_are_refused_by_the_api_and_the_worker(uri: str) -> None:
    with pytest.raises(ValidationError, match=r"output\.uri: "):
        models.OutputSpec(uri=uri)
    assert ArtifactStore(None, None).output_problem(uri.rstrip("/") + "/job/") is not None


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket", "s3://gpufleet-artifacts/studio/", "s3://my.bucket.v2/a..b/.hidden/", "s3://b-1/x/"],
)
def test_writable_outputs_are_admitted_by_both(uri: str) -> None:
    models.OutputSpec(uri=uri)
    assert ArtifactStore(None, None).output_problem(uri.rstrip("/") + "/job/") is None


@SETTINGS
@given(uri=admitted_strings(crd_schema("GenerationJob", "spec", "output", "uri")))
def test_the_worker_takes_every_output_the_api_admits(uri: str) -> None:
    try:
        models.OutputSpec(uri=uri)  # the CEL rules' twin
    except ValidationError:
        assume(False)
    prefix = uri.rstrip("/") + "/job/"  # what the operator submits: <uri>/<job name>/
    request = SubmitRequest(
        job_id="ns/job",
        attempt=1,
        task="text-to-image",
        model="tiny-sd",
        input={"prompt": "a lighthouse"},
        vram_bytes=2**30,
        output_uri=prefix,
    )
    assert ArtifactStore(None, None).output_problem(request.output_uri) is None
