"""The cache's typed jobs: parsed once per resourceVersion, the spec only when it changed."""

from __future__ import annotations

import copy

import pytest

from gpufleet.api.models import GenerationJob
from gpufleet.controller.cache import Cache

from .fakes import job_body


def stored(body: dict, version: int, **status: object) -> dict:
    """``body`` as the API server would return it at ``version``, with ``status``."""
    again = copy.deepcopy(body)
    again["metadata"].update(uid="u-1", resourceVersion=str(version), namespace="default")
    again["status"] = {**again.get("status", {}), **status}
    return again


@pytest.fixture
def full_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the jobs GenerationJob.model_validate parsed whole."""
    seen: list[str] = []
    original = GenerationJob.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls, obj, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(obj["metadata"]["name"])
        return original(cls, obj, *args, **kwargs)

    monkeypatch.setattr(GenerationJob, "model_validate", classmethod(counting))
    return seen


def test_a_status_write_reparses_the_status_only(full_parses: list[str]) -> None:
    cache = Cache()
    first = stored(job_body("a"), 1)
    assert cache.parsed(first).status.phase is None  # type: ignore[union-attr]
    queued = cache.parsed(stored(first, 2, phase="Queued", queuePosition=3))
    assert queued is not None
    assert (queued.status.phase, queued.status.queue_position) == ("Queued", 3)
    assert queued.metadata["resourceVersion"] == "2"
    assert queued.spec == cache.parsed(first).spec  # type: ignore[union-attr]
    assert full_parses == ["a"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda body: body["spec"].update(cancel=True), id="spec changed"),
        pytest.param(lambda body: body["metadata"].update(uid="u-2"), id="another object"),
    ],
)
def test_a_new_spec_or_object_is_parsed_whole(full_parses: list[str], change) -> None:  # type: ignore[no-untyped-def]
    cache = Cache()
    first = stored(job_body("a"), 1)
    cache.parsed(first)
    later = stored(first, 2)
    change(later)
    job = cache.parsed(later)
    assert job is not None and job.metadata["uid"] == later["metadata"]["uid"]
    assert job.spec.cancel == later["spec"].get("cancel", False)
    assert full_parses == ["a", "a"]


def test_a_status_that_does_not_parse_makes_the_job_unreadable() -> None:
    cache = Cache()
    first = stored(job_body("a"), 1)
    assert cache.parsed(first) is not None
    assert cache.parsed(stored(first, 2, phase="NoSuchPhase")) is None
    assert cache.parsed(stored(first, 3, phase="Queued")) is not None


def test_the_cache_holds_no_managed_fields_nor_kubectls_copy_of_the_manifest() -> None:
    cache = Cache()
    body = stored(job_body("a"), 1)
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    body["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "studio.example/owner": "ana",
    }
    held = cache.remember_job(body)
    assert held is cache.jobs[("default", "a")]
    assert "managedFields" not in held["metadata"]
    assert held["metadata"]["annotations"] == {"studio.example/owner": "ana"}
    assert body["metadata"]["managedFields"]  # the watch's own body is left as it was
    job = cache.parsed(held)
    assert job is not None and "managedFields" not in job.metadata
    assert cache.remember_job(stored(job_body("a"), 0)) is None  # older than the one held
