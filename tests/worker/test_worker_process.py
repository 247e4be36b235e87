"""The worker as a process (CPU, simulated GPU) against the real S3 server."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker import protocol as p

pytestmark = [pytest.mark.s3, pytest.mark.slow]

GIB = 2**30
MODEL_VRAM = 512 * 2**20
GPU_MEMORY = 4 * GIB
BUCKET = "artifacts"


@pytest.fixture(scope="module")
def worker(s3_server: S3Server, start_worker: Any) -> Any:
    if BUCKET not in {b["Name"] for b in s3_server.client().list_buckets()["Buckets"]}:
        s3_server.create_bucket(BUCKET)
    return start_worker(
        {
            "name": "worker-a",
            "maxJobsPerGpu": 3,
            "models": [
                {"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "512Mi", "preload": True},
                # loaded when a job first needs it; and one whose directory does not exist
                {"name": "cold", "source": "builtin://tiny-sd", "vram": "512Mi"},
                {"name": "broken", "source": "file:///nonexistent/model", "vram": "512Mi"},
            ],
            "simulatedGpu": {"product": "Simulated-A100", "memory": "4Gi"},
        },
        env=s3_server.env(),
    )


def submit_body(job: str, attempt: int = 1, **input_fields: Any) -> dict[str, Any]:
    return {
        "jobId": f"studio/{job}",
        "attempt": attempt,
        "task": "text-to-image",
        "model": "tiny-sd",
        "input": {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 6, "seed": 42}
        | input_fields,
        "vramBytes": GIB // 4,
        "outputUri": f"s3://{BUCKET}/studio/{job}/",
    }


def events(client: httpx.Client, run_id: str, timeout: float = 120) -> list[tuple[int, str, dict]]:
    """Every event of a run's stream, until the server closes it after `result`."""
    received: list[tuple[int, str, dict]] = []
    with client.stream("GET", p.job_path(p.JOB_EVENTS, run_id), timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith(p.SSE_MEDIA_TYPE)
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if fields:
                    received.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    return received


def wait_until_done(client: httpx.Client, run_id: str, timeout: float = 120) -> dict:
    return wait_for(
        lambda: client.get(p.job_path(p.JOB, run_id)).json(),
        lambda status: status["phase"] != p.Phase.RUNNING,
        timeout,
        what=f"run {run_id} to end",
    )


def gpu(worker: Any) -> dict:
    inventory = worker.client.get(p.INVENTORY).json()
    (only,) = inventory["gpus"]
    return only


def test_submit_streams_progress_in_order_then_success_with_png_in_bucket(
    worker: Any, s3_server: S3Server
) -> None:
    response = worker.client.post(p.JOBS, json=submit_body("lighthouse"))
    assert response.status_code == 201, response.text
    run_id = response.json()["runId"]
    assert run_id == p.run_id("studio/lighthouse", 1)

    stream = events(worker.client, run_id)

    ids = [event_id for event_id, _, _ in stream]
    assert ids == list(range(1, len(stream) + 1))
    names = [name for _, name, _ in stream]
    assert names[0] == "state" and names[-1] == "result"
    assert names[1:-1] == ["progress"] * 6
    steps = [data["progress"]["step"] for _, name, data in stream if name == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [data["progress"]["percent"] for _, name, data in stream if name == "progress"][-1] == 100
    result = p.JobEvent.model_validate(stream[-1][2]).status
    assert result is not None
    assert (result.phase, result.reason) == (p.Phase.SUCCEEDED, p.Reason.COMPLETED)
    assert result.vram_reserved_bytes == 0

    (artifact,) = result.artifacts
    assert artifact.url == f"s3://{BUCKET}/studio/lighthouse/image-0.png"
    assert artifact.media_type == "image/png"
    stored = s3_server.client().get_object(Bucket=BUCKET, Key="studio/lighthouse/image-0.png")
    body = stored["Body"].read()
    assert hashlib.sha256(body).hexdigest() == artifact.sha256
    assert len(body) == artifact.size_bytes
    assert stored["ContentType"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (64, 64)


def test_a_late_stream_replays_and_resumes_after_last_event_id(worker: Any) -> None:
    run_id = worker.client.post(p.JOBS, json=submit_body("replay")).json()["runId"]
    wait_until_done(worker.client, run_id)
    full = events(worker.client, run_id)
    assert full[-1][1] == "result"
    worker.client.headers["Last-Event-ID"] = str(len(full) - 2)
    try:
        tail = events(worker.client, run_id)
    finally:
        del worker.client.headers["Last-Event-ID"]
    assert tail == full[-2:]


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(worker: Any) -> None:
    def sha(job: str, seed: int) -> str:
        run_id = worker.client.post(p.JOBS, json=submit_body(job, seed=seed)).json()["runId"]
        status = wait_until_done(worker.client, run_id)
        assert status["phase"] == "Succeeded", status
        return status["artifacts"][0]["sha256"]

    first = sha("seed-a", 7)
    assert sha("seed-b", 7) == first
    assert sha("seed-c", 8) != first


def test_cancel_mid_run_stops_within_two_seconds_and_frees_vram(worker: Any, s3_server: S3Server) -> None:
    idle_reserved = gpu(worker)["reservedBytes"]
    body = submit_body("long", width=256, height=256, steps=250, numImages=2)
    run_id = worker.client.post(p.JOBS, json=body).json()["runId"]
    assert gpu(worker)["reservedBytes"] == idle_reserved + GIB // 4

    wait_for(
        lambda: worker.client.get(p.job_path(p.JOB, run_id)).json()["progress"]["step"],
        lambda step: step >= 1,
        60,
        what="first step",
    )
    cancelled_at = time.monotonic()
    response = worker.client.post(p.job_path(p.JOB_CANCEL, run_id))
    assert response.status_code == 200
    status = wait_until_done(worker.client, run_id, timeout=2)
    assert time.monotonic() - cancelled_at < 2
    assert (status["phase"], status["reason"]) == ("Cancelled", "Cancelled")
    assert status["progress"]["step"] < 250
    assert status["vramReservedBytes"] == 0 and status["artifacts"] == []
    assert gpu(worker)["reservedBytes"] == idle_reserved
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix="studio/long/")
    assert listed["KeyCount"] == 0


def finished_runs(worker: Any) -> float:
    total = 0.0
    for line in worker.client.get(p.METRICS).text.splitlines():
        if line.startswith("gpufleet_worker_jobs_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_resubmitting_the_same_job_and_attempt_runs_nothing_twice(worker: Any) -> None:
    before = finished_runs(worker)
    first = worker.client.post(p.JOBS, json=submit_body("once"))
    again = worker.client.post(p.JOBS, json=submit_body("once"))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["runId"] == first.json()["runId"]
    assert again.json()["createdAt"] == first.json()["createdAt"]
    done = wait_until_done(worker.client, first.json()["runId"])
    after_finish = worker.client.post(p.JOBS, json=submit_body("once"))
    assert after_finish.status_code == 200
    assert after_finish.json()["artifacts"] == done["artifacts"]
    assert finished_runs(worker) == before + 1
    runs = [job for job in worker.client.get(p.JOBS).json()["jobs"] if job["jobId"] == "studio/once"]
    assert len(runs) == 1

    changed = worker.client.post(p.JOBS, json=submit_body("once", prompt="something else"))
    assert changed.status_code == 409
    assert changed.json()["reason"] == "SpecMismatch"
    next_attempt = worker.client.post(p.JOBS, json=submit_body("once", attempt=2))
    assert next_attempt.status_code == 201
    wait_until_done(worker.client, next_attempt.json()["runId"])


def test_a_job_over_the_free_vram_is_refused_with_asked_and_free(worker: Any) -> None:
    admittable = gpu(worker)["admittableBytes"]
    assert admittable == GPU_MEMORY - MODEL_VRAM
    body = submit_body("too-big") | {"vramBytes": admittable + 1}
    response = worker.client.post(p.JOBS, json=body)
    assert response.status_code == 409
    error = p.ErrorResponse.model_validate(response.json())
    assert error.reason is p.Reason.INSUFFICIENT_VRAM
    assert (error.asked_bytes, error.free_bytes) == (admittable + 1, admittable)
    assert str(admittable + 1) in error.message and str(admittable) in error.message
    assert worker.client.get(p.job_path(p.JOB, p.run_id("studio/too-big", 1))).status_code == 404


def test_bad_input_is_refused_naming_the_field(worker: Any) -> None:
    response = worker.client.post(p.JOBS, json=submit_body("bad", width=100))
    assert response.status_code == 422
    assert response.json()["reason"] == "InvalidRequest"
    assert "input.width" in response.json()["message"]
    unknown = worker.client.post(p.JOBS, json=submit_body("bad") | {"model": "sdxl"})
    assert (unknown.status_code, unknown.json()["reason"]) == (422, "UnknownModel")
    local = worker.client.post(p.JOBS, json=submit_body("bad") | {"outputUri": "file:///etc/"})
    assert (local.status_code, local.json()["reason"]) == (422, "UnsupportedOutput")


@pytest.mark.parametrize(
    "route",
    [
        ("GET", p.INVENTORY),
        ("GET", p.METRICS),
        ("GET", p.JOBS),
        ("POST", p.JOBS),
        ("GET", p.job_path(p.JOB, "studio_x_1")),
        ("POST", p.job_path(p.JOB_CANCEL, "studio_x_1")),
        ("GET", p.job_path(p.JOB_EVENTS, "studio_x_1")),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer"])
def test_a_wrong_or_missing_token_gets_401(
    worker: Any, route: tuple[str, str], authorization: str | None
) -> None:
    method, path = route
    headers = {p.AUTH_HEADER: authorization} if authorization else {}
    body = submit_body("unauthorized") if method == "POST" else None
    response = httpx.request(method, worker.base_url + path, headers=headers, json=body, timeout=10)
    assert response.status_code == 401
    assert response.json()["reason"] == "Unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_needs_no_token(worker: Any) -> None:
    for path in (p.HEALTHZ, p.READYZ):
        assert httpx.get(worker.base_url + path, timeout=10).status_code == 200


class CountingImageServer(http.server.ThreadingHTTPServer):
    hits = 0


@pytest.fixture
def loopback_image_url() -> Iterator[tuple[str, CountingImageServer]]:
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, format="PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hits += 1
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png.getvalue())

        def log_message(self, *args: object) -> None:
            pass

    server = CountingImageServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.png", server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "url",
    [
        None,  # the loopback server below
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://localhost/x.png",
    ],
)
def test_input_images_from_internal_addresses_are_refused(
    worker: Any, loopback_image_url: tuple[str, CountingImageServer], url: str | None
) -> None:
    target = url or loopback_image_url[0]
    body = submit_body(f"ssrf-{hashlib.sha256(target.encode()).hexdigest()[:8]}")
    body["task"] = "image-to-image"
    body["input"] |= {"image": {"url": target}}
    response = worker.client.post(p.JOBS, json=body)
    assert response.status_code == 201, response.text
    status = wait_until_done(worker.client, response.json()["runId"])
    assert (status["phase"], status["reason"]) == ("Failed", "InputRefused"), status
    assert "refused" in status["message"]
    assert loopback_image_url[1].hits == 0


def test_metrics_count_outcomes_and_report_vram(worker: Any) -> None:
    text = worker.client.get(p.METRICS).text
    assert 'gpufleet_worker_jobs_total{model="tiny-sd",phase="Succeeded",reason="Completed"}' in text
    assert 'gpufleet_worker_model_load_seconds_count{model="tiny-sd"} 1.0' in text
    assert 'kind="total",product="Simulated-A100"} 4.294967296e+09' in text
    assert "gpufleet_worker_job_seconds_bucket" in text


def test_a_cold_model_loads_for_its_first_job_and_a_broken_one_fails_with_its_cause(worker: Any) -> None:
    response = worker.client.post(p.JOBS, json=submit_body("cold-1") | {"model": "cold"})
    assert response.status_code == 201, response.text
    load = response.json()["modelLoad"]
    assert (load["warm"], load["source"], load["loading"], load["seconds"]) == (False, "disk", True, None)
    stream = events(worker.client, response.json()["runId"])
    names = [name for _, name, _ in stream]
    assert names == ["state", "progress", "state", *["progress"] * 6, "result"]
    assert stream[1][2]["progress"]["stage"] == p.LOADING_MODEL_STAGE
    result = p.JobEvent.model_validate(stream[-1][2]).status
    assert result is not None and result.phase is p.Phase.SUCCEEDED and result.model_load is not None
    assert (
        not result.model_load.warm and not result.model_load.loading and result.model_load.seconds is not None
    )
    warm = wait_until_done(
        worker.client,
        worker.client.post(p.JOBS, json=submit_body("cold-2") | {"model": "cold"}).json()["runId"],
    )
    load = warm["modelLoad"]
    assert (load["warm"], load["source"], load["loading"], load["seconds"]) == (True, "resident", False, 0)

    run_id = worker.client.post(p.JOBS, json=submit_body("broken-1") | {"model": "broken"}).json()["runId"]
    failed = wait_until_done(worker.client, run_id)
    assert (failed["phase"], failed["reason"]) == ("Failed", "ModelFailed")
    assert failed["message"] == "model broken: file:///nonexistent/model: nothing at /nonexistent/model"
    refused = worker.client.post(p.JOBS, json=submit_body("broken-2") | {"model": "broken"})
    assert refused.status_code == 422 and refused.json()["reason"] == "ModelFailed"
    models = {m["name"]: m for m in worker.client.get(p.INVENTORY).json()["models"]}
    assert (models["broken"]["state"], models["broken"]["message"]) == ("Failed", failed["message"])
    cold = models["cold"]
    assert (cold["state"], cold["loads"], cold["warmHits"]) == ("Loaded", 1, 1)
    assert models["tiny-sd"]["preload"] and models["tiny-sd"]["state"] == "Loaded"
    assert worker.client.post(p.JOBS, json=submit_body("after")).status_code == 201  # the others still serve
