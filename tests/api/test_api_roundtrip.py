"""Every spec and status the models allow is accepted by the API server and reads back unchanged.

The strategies draw from the generated CRD schema and the models decide what is valid, so
a disagreement between the two sides (a CEL rule stricter than its Python twin, a default
the server adds, a value the server rewrites) fails here. Derandomized under CI.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.api import models, testing
from gpufleet.api.testing import Objects

pytestmark = pytest.mark.cluster

ROUND_TRIP = settings(
    max_examples=30,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def name() -> str:
    return f"x{uuid.uuid4().hex[:12]}"


@ROUND_TRIP
@given(spec=testing.pool_specs(), status=testing.pool_statuses())
def test_worker_pools_round_trip(
    objects: Objects, spec: models.WorkerPoolSpec, status: models.WorkerPoolStatus
) -> None:
    pool = models.WorkerPool(metadata={"name": name()}, spec=spec, status=status)
    created = objects.create(models.to_manifest(pool))
    assert models.WorkerPool.model_validate(created).spec == spec

    created["status"] = models.to_manifest(pool)["status"]
    objects.replace_status(created)
    read = models.WorkerPool.model_validate(objects.get("WorkerPool", pool.metadata["name"]))
    assert (read.spec, read.status) == (spec, status)


@ROUND_TRIP
@given(spec=testing.job_specs(), status=testing.job_statuses())
def test_generation_jobs_round_trip(
    objects: Objects, spec: models.GenerationJobSpec, status: models.GenerationJobStatus
) -> None:
    job = models.GenerationJob(metadata={"name": name()}, spec=spec, status=status)
    created = objects.create(models.to_manifest(job))
    assert models.GenerationJob.model_validate(created).spec == spec

    created["status"] = models.to_manifest(job)["status"]
    objects.replace_status(created)
    read = models.GenerationJob.model_validate(objects.get("GenerationJob", job.metadata["name"]))
    assert (read.spec, read.status) == (spec, status)


@settings(ROUND_TRIP, max_examples=10)
@given(data=st.data())
def test_cancel_is_accepted_on_any_valid_job(objects: Objects, data: st.DataObject) -> None:
    job = models.GenerationJob(metadata={"name": name()}, spec=data.draw(testing.job_specs()))
    created = objects.create(models.to_manifest(job))
    created["spec"]["cancel"] = True
    assert models.GenerationJob.model_validate(objects.replace(created)).spec.cancel
