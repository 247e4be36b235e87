"""A failed model is tried again: the worker as a process against the real S3 server, with a
tiny diffusers pipeline uploaded there. A model whose bucket does not exist yet fails, and
loads once the bucket and its objects appear; a model whose objects fail their digest stays
failed even after the objects are fixed (until the pool's spec changes it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker import protocol as p
from gpufleet_worker.sources import local_digest
from tests.worker.test_worker_process import wait_until_done
from tests.worker.tinymodels import save_tiny_pipeline

pytestmark = [pytest.mark.s3, pytest.mark.slow]

# Each retry after the same wait, so the test can upload between two tries (see below).
RETRY_SECONDS = 3.0
UPLOAD_MARGIN_SECONDS = 2.0  # the upload starts only when the next try is at least this far off


def upload(s3_server: S3Server, folder: Path, bucket: str, prefix: str, skip: str | None = None) -> None:
    s3 = s3_server.client()
    for path in sorted(f for f in folder.rglob("*") if f.is_file()):
        key = path.relative_to(folder).as_posix()
        body = b"not the weights" if key == skip else path.read_bytes()
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=body)


def models(worker: Any) -> dict[str, dict]:
    return {m["name"]: m for m in worker.client.get(p.INVENTORY).json()["models"]}


def submit(worker: Any, job: str, model: str) -> Any:
    return worker.client.post(
        p.JOBS,
        json={
            "jobId": f"studio/{job}",
            "attempt": 1,
            "task": "text-to-image",
            "model": model,
            "input": {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 1},
            "vramBytes": 2**28,
            "outputUri": f"s3://{ARTIFACTS}/retry/{job}/",
        },
    )


ARTIFACTS = "retry-artifacts"


def seconds_between(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_a_model_whose_bucket_appears_later_is_retried_and_a_digest_mismatch_is_not(
    s3_server: S3Server, start_worker: Any, tmp_path: Path
) -> None:
    tiny = save_tiny_pipeline(tmp_path / "weights")
    digest = local_digest(tiny)
    late_bucket, fixed_bucket = f"late-{uuid.uuid4().hex[:8]}", f"fixed-{uuid.uuid4().hex[:8]}"
    for bucket in (ARTIFACTS, fixed_bucket):
        if bucket not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}:
            s3_server.create_bucket(bucket)
    upload(s3_server, tiny, fixed_bucket, "tiny-sd", skip="model_index.json")  # fails its digest
    worker = start_worker(
        {
            "name": "worker-retry",
            "models": [
                {"name": "late", "source": f"s3://{late_bucket}/tiny-sd", "vram": "512Mi"},
                {
                    "name": "tampered",
                    "source": f"s3://{fixed_bucket}/tiny-sd",
                    "vram": "512Mi",
                    "digest": digest,
                },
            ],
            "modelCache": {"path": str(tmp_path / "cache")},
            "modelRetry": {"firstSeconds": RETRY_SECONDS, "maxSeconds": RETRY_SECONDS},
            "simulatedGpu": {"memory": "4Gi"},
        },
        env=s3_server.env(),
    )

    # The bucket is missing: the job fails with the cause, the model is Failed with a next try,
    # and jobs for it are refused meanwhile.
    failed = wait_until_done(worker.client, submit(worker, "late-1", "late").json()["runId"])
    assert (failed["phase"], failed["reason"]) == ("Failed", "ModelFailed")
    assert failed["message"].endswith("the bucket does not exist (NoSuchBucket)")
    late = models(worker)["late"]
    assert late["state"] == "Failed" and late["retryAt"] is not None
    refused = submit(worker, "late-2", "late")
    assert (refused.status_code, refused.json()["reason"]) == (422, "ModelFailed")

    # A digest mismatch is permanent: no next try.
    tampered = wait_until_done(worker.client, submit(worker, "tampered-1", "tampered").json()["runId"])
    assert (tampered["reason"], "digest mismatch" in tampered["message"]) == ("ModelFailed", True)
    assert models(worker)["tampered"]["retryAt"] is None
    upload(s3_server, tiny, fixed_bucket, "tiny-sd")  # now it would pass, were it tried

    # Publish the late model between two tries (S3 cannot publish several objects at once, and
    # a try in the middle would see half a model), then wait for the worker to take it.
    def next_try_in() -> float:
        return seconds_between(models(worker)["late"]["retryAt"], datetime.now(UTC).isoformat())

    wait_for(next_try_in, lambda s: s >= UPLOAD_MARGIN_SECONDS, 30, interval=0.05, what="a quiet moment")
    deadline = models(worker)["late"]["retryAt"]
    s3_server.create_bucket(late_bucket)
    upload(s3_server, tiny, late_bucket, "tiny-sd")
    still = models(worker)["late"]["retryAt"]  # the same try (tries are RETRY_SECONDS apart)
    assert abs(seconds_between(still, deadline)) < 1.0, "the upload took longer than the margin"
    late = wait_for(
        lambda: models(worker)["late"],
        lambda m: m["state"] != "Failed",
        60,
        interval=0.2,
        what="late to recover",
    )
    assert (late["state"], late["message"], late["retryAt"], late["onDisk"]) == ("Available", "", None, True)

    done = wait_until_done(worker.client, submit(worker, "late-3", "late").json()["runId"])
    assert (done["phase"], done["modelLoad"]["source"]) == ("Succeeded", "disk")
    assert models(worker)["late"]["state"] == "Loaded"

    # The late model needed at least one more try after the fix above; the tampered one got none.
    tampered_now = models(worker)["tampered"]
    assert (tampered_now["state"], tampered_now["retryAt"]) == ("Failed", None)
    assert submit(worker, "tampered-2", "tampered").json()["reason"] == "ModelFailed"
