"""The hypothesis strategies draw valid objects that survive the trip through JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gpufleet.api import models, testing

STRATEGIES = {
    "pool spec": (models.WorkerPoolSpec, testing.pool_specs()),
    "pool status": (models.WorkerPoolStatus, testing.pool_statuses()),
    "job spec": (models.GenerationJobSpec, testing.job_specs()),
    "job status": (models.GenerationJobStatus, testing.job_statuses()),
}


@pytest.mark.parametrize("name", STRATEGIES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_drawn_objects_round_trip_through_json(name: str, data: st.DataObject) -> None:
    model, strategy = STRATEGIES[name]
    drawn: BaseModel = data.draw(strategy)
    wire = json.loads(json.dumps(drawn.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assert model.model_validate(wire) == drawn


@pytest.mark.parametrize(
    ("strategy", "shape"),
    [
        (testing.job_specs, lambda j: j.input.mask is not None),
        (testing.job_specs, lambda j: j.vram is not None),
        (testing.pool_specs, lambda p: p.autoscaling is not None),
        (testing.pool_specs, lambda p: p.runtime is not models.Runtime.BUILTIN),
        (testing.pool_specs, lambda p: p.template.env),
        (testing.job_statuses, lambda s: s.artifacts),
        (testing.pool_statuses, lambda s: s.workers),
    ],
)
def test_strategies_reach_the_interesting_shapes(strategy, shape) -> None:
    """Guards against a strategy that only ever draws the trivial case."""
    find(strategy(), shape, settings=settings(database=None, max_examples=200, phases=[Phase.generate]))


def test_repairs_make_cross_field_rules_hold() -> None:
    spec = testing._repair_job_spec({"task": "inpaint", "input": {"width": 2048, "height": 2048}})
    job = models.GenerationJobSpec.model_validate(
        spec | {"poolRef": {"name": "p"}, "model": "m", "output": {"uri": "s3://bucket/x"}}
    )
    assert job.input.image and job.input.mask
    assert job.input.width * job.input.height <= 2048 * 1024


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"set": {"a.b.0": 9}}, {"a": {"b": [9, 2]}, "c": 3}),
        ({"remove": ["c"]}, {"a": {"b": [1, 2]}}),
        ({"set": {"a.x": {"y": 1}}, "remove": ["a.b"]}, {"a": {"x": {"y": 1}}, "c": 3}),
    ],
)
def test_edited_copies(edit: dict, expected: dict) -> None:
    original = {"a": {"b": [1, 2]}, "c": 3}
    assert testing.edited(original, **edit) == expected
    assert original == {"a": {"b": [1, 2]}, "c": 3}


def test_edited_refuses_missing_paths() -> None:
    with pytest.raises(KeyError):
        testing.edited({"a": {}}, remove=["a.b"])
