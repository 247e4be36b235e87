"""The cache: typed jobs parsed once per resourceVersion (the spec only when it changed), the
versions it holds, and the jobs it announces as new."""

from __future__ import annotations

import copy
import json

import pytest

from gpufleet.api.models import GenerationJob
from gpufleet.controller.cache import Cache, gives_work

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


def test_the_echo_of_a_held_version_neither_replaces_it_nor_wakes_the_pool() -> None:
    cache = Cache()
    held = cache.remember_job(stored(job_body("a"), 7, phase="Queued"))
    wakeup = cache.wakeup("default", "sd")
    wakeup.clear()
    assert cache.remember_job(stored(job_body("a"), 7, phase="Queued")) is None  # the watch's echo
    assert cache.jobs[("default", "a")] is held
    assert not wakeup.is_set()
    assert cache.remember_job(stored(job_body("a"), 6, phase="Pending")) is None  # older
    later = cache.remember_job(stored(job_body("a"), 8, phase="Succeeded"))
    assert later is not None and cache.jobs[("default", "a")] is later and wakeup.is_set()


def change(version: int, phase: str | None = None, **spec: object) -> dict:
    body = stored(job_body("a", **spec), version)
    body["status"] = {"phase": phase} if phase else {}
    return body


@pytest.mark.parametrize(
    ("before", "after", "wakes"),
    [
        pytest.param(None, change(1, "Running"), True, id="listed running"),
        pytest.param(change(1), change(2, "Queued"), False, id="first status"),
        pytest.param(change(2, "Queued"), change(3, "Queued"), False, id="position"),
        pytest.param(change(3, "Queued"), change(4, "Dispatched"), False, id="dispatched"),
        pytest.param(change(4, "Dispatched"), change(5, "Running"), False, id="running"),
        pytest.param(change(5, "Running"), change(6, "Running"), False, id="progress"),
        pytest.param(change(5, "Running"), change(6, "Succeeded"), True, id="ended: a slot is free"),
        pytest.param(change(5, "Running"), change(6, "Queued"), True, id="back to the queue"),
    ],
)
def test_a_round_is_woken_by_the_changes_it_has_work_in(before, after, wakes) -> None:  # type: ignore[no-untyped-def]
    assert gives_work(before, after) is wakes


def test_a_new_spec_a_deletion_or_another_object_wakes_the_round() -> None:
    queued = change(2, "Queued")
    cancelled = change(3, "Queued", cancel=True)
    cancelled["metadata"]["generation"] = 2
    deleting = change(3, "Queued")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
    other = change(3, "Queued")
    other["metadata"]["uid"] = "u-2"
    assert all(gives_work(queued, after) for after in (cancelled, deleting, other))


def test_jobs_without_a_status_are_announced_to_the_first_status_writer_once_seen() -> None:
    cache = Cache()
    cache.remember_job(stored(job_body("a"), 1))
    cache.remember_job(stored(job_body("b"), 2, phase="Queued"))
    deleting = stored(job_body("c"), 3)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
    cache.remember_job(deleting)
    assert list(cache.arrivals) == [("default", "a")] and cache.arrived.is_set()
    cache.forget_job("default", "a")
    assert not cache.arrivals


def test_poolless_jobs_are_the_ones_whose_pool_is_not_held() -> None:
    cache = Cache()
    cache.remember_pool({"metadata": {"namespace": "default", "name": "sd", "resourceVersion": "1"}})
    cache.remember_job(stored(job_body("a"), 2))
    cache.remember_job(stored(job_body("b", pool="gone"), 3))
    moved = stored(job_body("c", pool="gone"), 4)
    cache.remember_job(moved)
    cache.remember_job(stored(job_body("c"), 5))  # its pool changed to one that exists
    assert [b["metadata"]["name"] for b in cache.poolless_jobs()] == ["b"]
    cache.forget_pool("default", "sd")
    assert sorted(b["metadata"]["name"] for b in cache.poolless_jobs()) == ["a", "b", "c"]


def test_a_pools_status_write_does_not_wake_its_round_a_new_spec_does() -> None:
    cache = Cache()

    def pool(version: int, generation: int, **status: object) -> dict:
        meta = {"namespace": "default", "name": "sd", "uid": "p", "resourceVersion": str(version)}
        return {"metadata": {**meta, "generation": generation}, "spec": {}, "status": status}

    cache.remember_pool(pool(1, 1))
    wakeup = cache.wakeup("default", "sd")
    assert wakeup.is_set()
    wakeup.clear()
    cache.remember_pool(pool(2, 1, queueDepth=5))  # its round's own status write
    assert not wakeup.is_set() and cache.pools[("default", "sd")]["status"] == {"queueDepth": 5}
    cache.remember_pool(pool(3, 2, queueDepth=5))
    assert wakeup.is_set()


def test_held_jobs_share_their_fields_sets_and_stay_what_they_parse_to() -> None:
    cache = Cache()
    queued = {"phase": "Queued", "reason": "Queued", "message": "position 1", "queuePosition": 1}
    bodies = [stored(job_body(name), 1, **queued) for name in ("a", "b")]
    a, b = (cache.parsed(body) for body in bodies)
    assert a is not None and b is not None
    assert a.spec.__pydantic_fields_set__ is b.spec.__pydantic_fields_set__
    assert a.spec.input.__pydantic_fields_set__ is b.spec.input.__pydantic_fields_set__
    assert a.status.__pydantic_fields_set__ is b.status.__pydantic_fields_set__
    # Nothing else changes: the held job dumps as a fresh parse of its body does.
    fresh = GenerationJob.model_validate(bodies[0])
    assert a.model_dump(by_alias=True) == fresh.model_dump(by_alias=True)
    assert a.spec.model_fields_set == fresh.spec.model_fields_set
    # A copy gets a set of its own; changing a held model in place is refused, not shared.
    shared = set(a.status.__pydantic_fields_set__)
    moved = a.status.model_copy(update={"queue_position": 0})
    assert moved.queue_position == 0 and "queue_position" in moved.model_fields_set
    assert set(b.status.__pydantic_fields_set__) == shared
    with pytest.raises(TypeError, match="model_copy"):
        a.status.queue_position = 5


def test_held_bodies_share_their_strings_and_the_parsed_job_shares_the_bodys() -> None:
    cache = Cache()
    message = "position 3 in pool sd's queue"
    condition = {"type": "Ready", "status": "False", "reason": "Queued", "message": message}
    condition["lastTransitionTime"] = "2026-12-03T10:00:00Z"
    status = {"phase": "Queued", "reason": "Queued", "message": message, "conditions": [condition]}
    # Each as a watch event decodes it: its own copies of every string.
    a, b = (json.loads(json.dumps(stored(job_body(name), 1, **status))) for name in ("a", "b"))
    assert a["status"]["message"] is not b["status"]["message"]
    held_a, held_b = cache.remember_job(a), cache.remember_job(b)
    assert held_a is not None and held_b is not None
    assert held_a == a and held_b == b  # the same body, only its strings shared
    assert held_a["spec"]["model"] is held_b["spec"]["model"]
    assert held_a["status"]["message"] is held_b["status"]["conditions"][0]["message"]
    assert next(iter(held_a["spec"])) is next(iter(held_b["spec"]))  # keys too
    job = cache.parsed(held_a)
    assert job is not None and job.status.message is held_a["status"]["message"]
    assert job.spec.model is held_a["spec"]["model"]
