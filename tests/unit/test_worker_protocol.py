"""The worker protocol: run ids, submit validation, events."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from gpufleet.api.inputs import JobInput
from gpufleet_worker import protocol as p


def body(**changes: object) -> dict:
    return {
        "jobId": "studio/lighthouse-1",
        "attempt": 1,
        "task": "text-to-image",
        "model": "tiny-sd",
        "input": {"prompt": "a lighthouse"},
        "vramBytes": 2**30,
        "outputUri": "s3://gpufleet-artifacts/studio/lighthouse-1/",
    } | changes


@pytest.mark.parametrize(
    ("job_id", "attempt", "expected"),
    [
        ("studio/lighthouse-1", 1, "studio_lighthouse-1_1"),
        ("3f2c0b1e-aaaa-bbbb-cccc-0123456789ab", 12, "3f2c0b1e-aaaa-bbbb-cccc-0123456789ab_12"),
        ("a/b.c", 9999, "a_b.c_9999"),
    ],
)
def test_run_ids_are_url_safe_and_match_the_route_pattern(job_id: str, attempt: int, expected: str) -> None:
    assert p.run_id(job_id, attempt) == expected
    assert re.match(p.RUN_ID_PATTERN, expected)
    assert p.job_path(p.JOB_EVENTS, expected) == f"/v1/jobs/{expected}/events"


def test_distinct_jobs_and_attempts_get_distinct_run_ids() -> None:
    ids = {p.run_id(j, a) for j in ("a/b", "a-b/c", "a/b-c", "ab") for a in (1, 2, 11)}
    assert len(ids) == 12


def test_submit_uses_the_shared_job_input_and_its_bounds() -> None:
    request = p.SubmitRequest.model_validate(body())
    assert isinstance(request.input, JobInput)
    assert request.run_id == "studio_lighthouse-1_1"
    with pytest.raises(ValidationError, match=r"input\.width"):
        p.SubmitRequest.model_validate(body(input={"prompt": "x", "width": 65}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("jobId", "Studio/Upper"),
        ("jobId", "a/b/c"),
        ("jobId", "a_b"),
        ("attempt", 0),
        ("vramBytes", 0),
        ("outputUri", "s3://bucket/no-trailing-slash"),
        ("outputUri", "http://example.com/out/"),
        ("outputUri", "file://relative/"),
        ("task", "paint"),
        ("unknownField", 1),
    ],
)
def test_submit_refuses_bad_fields_by_name(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        p.SubmitRequest.model_validate(body(**{field: value}))


def test_events_carry_the_payload_their_name_promises() -> None:
    progress = p.Progress(step=1, total_steps=2, percent=50)
    assert p.JobEvent(run_id="a_1", event=p.EventName.PROGRESS, progress=progress).progress == progress
    with pytest.raises(ValidationError, match="a progress event carries progress"):
        p.JobEvent(run_id="a_1", event=p.EventName.PROGRESS)
    with pytest.raises(ValidationError, match="a result event carries status"):
        p.JobEvent(run_id="a_1", event=p.EventName.RESULT, progress=progress)


def test_the_protocol_module_imports_no_torch_or_web_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gpufleet_worker.protocol, gpufleet_worker.config; "
        "heavy = {'torch', 'fastapi', 'starlette', 'uvicorn', 'boto3'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
