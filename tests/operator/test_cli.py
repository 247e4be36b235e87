"""The users' CLI and Python client against the real control plane, operator, worker
processes and MinIO: ``submit --watch`` in a real terminal (tmux), ``cp`` checked against
the bucket, and every bad input a user can give."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from kubernetes import client

from gpufleet.api.models import GROUP, VERSION
from gpufleet.client import AsyncClient, Client
from gpufleet.client.artifacts import S3Settings, split_s3_url
from gpufleet.localcluster import binaries
from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for

from .conftest import BUCKET, Fleet

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
PERCENT = re.compile(r"\[[#-]+\]\s+(\d+)%")


def job_manifest(
    name: str, namespace: str, pool: str = "sd", steps: int = 4, size: int = 64, images: int = 1, **spec: Any
) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GenerationJob",
        "metadata": {"name": name},
        "spec": {
            "poolRef": {"name": pool},
            "task": "text-to-image",
            "model": "tiny-sd",
            "input": {
                "prompt": f"cli {name}",
                "width": size,
                "height": size,
                "steps": steps,
                "seed": 7,
                "numImages": images,
            },
            "vram": "1Gi",
            "output": {"uri": f"s3://{BUCKET}/{namespace}/"},
            **spec,
        },
    }


class Cli:
    """`gpufleet` as a user runs it: a separate process with a kubeconfig and AWS variables."""

    def __init__(self, cluster: Any, namespace: str, s3: S3Server, workdir: Path) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_ENDPOINT_URL": s3.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gpufleet.cli", *args]

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 180
    ):
        return subprocess.run(
            self.command(*args, "-n", self.namespace) if args[0] != "completion" else self.command(*args),
            env=env or self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def manifest(self, name: str, **kwargs: Any) -> Path:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job_manifest(name, self.namespace, **kwargs)))
        return path


@pytest.fixture
def cli(cluster: Any, fleet: Fleet, s3_server: S3Server, tmp_path: Path) -> Cli:
    return Cli(cluster, fleet.namespace, s3_server, tmp_path)


@pytest.fixture
def bucket(s3_server: S3Server) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1",
    )


def ready_pool(fleet: Fleet) -> None:
    fleet.pool("sd", replicas=1)
    fleet.wait_ready_workers("sd", 1)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_submit_watch_draws_a_moving_bar_in_a_terminal_and_ends_with_the_artifacts(
    cli: Cli, fleet: Fleet, tmp_path: Path
) -> None:
    ready_pool(fleet)
    manifest = cli.manifest("sunrise", steps=160, size=256)
    script = tmp_path / "run.sh"
    command = " ".join(
        shlex.quote(a) for a in cli.command("submit", "-f", str(manifest), "--watch", "-n", cli.namespace)
    )
    script.write_text(f"{command}\necho EXIT=$?\nsleep 600\n")
    socket = f"gpufleet-test-{uuid.uuid4().hex[:8]}"  # a tmux server of its own
    tmux = ["tmux", "-L", socket]
    env = {**cli.env, "TERM": "xterm-256color"}
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "cli", "-x", "150", "-y", "20", f"bash {script}"],
        env=env,
        check=True,
    )
    screens: list[str] = []

    def capture() -> str:
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "cli"], capture_output=True, text=True, check=True
        ).stdout
        if not screens or screens[-1] != screen:
            screens.append(screen)
        return screen

    try:
        final = wait_for(capture, lambda s: "EXIT=" in s, 240, interval=0.1, what="submit --watch to end")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    (tmp_path / "screens.txt").write_text("\n----\n".join(s.rstrip() for s in screens))  # for docs/cli.md
    percents = [int(p) for screen in screens for p in PERCENT.findall(screen)]
    assert any(0 < p < 100 for p in percents), screens
    assert len(set(percents)) >= 3, f"the bar did not move: {sorted(set(percents))}"
    assert percents == sorted(percents), "progress went backwards"
    lines = [line for line in final.splitlines() if line.strip()]
    bars = [line for line in lines if line.startswith("gj/sunrise ") and "[" in line]
    assert len(bars) == 1, f"the bar must be redrawn in place, not repeated: {final}"
    assert "100%" in bars[0] and "Succeeded" in bars[0] and "on sd-" in bars[0]
    outcome = lines[lines.index("EXIT=0") - 1]
    job = fleet.get_job("sunrise")
    urls = [a["url"] for a in job["status"]["artifacts"]]
    assert outcome.startswith("gj/sunrise Succeeded"), final
    assert urls and all(url in outcome for url in urls), (outcome, urls)


def test_watch_of_a_job_that_cannot_run_ends_at_once_with_the_reason(cli: Cli, fleet: Fleet) -> None:
    result = cli("submit", "-f", str(cli.manifest("orphan", pool="nowhere")), "--watch", timeout=120)
    assert result.returncode == 1, result
    assert "gj/orphan Pending (Stalled): PoolNotFound" in result.stdout
    stalled = next(c for c in fleet.get_job("orphan")["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "PoolNotFound"

    # Once the user fixes the cause the job runs, and is no longer Stalled.
    fleet.pool("nowhere", replicas=1)
    fleet.wait_job(
        "orphan",
        lambda j: {c["type"]: c["status"] for c in j["status"]["conditions"]}["Stalled"] == "False",
        120,
        what="the job to leave Stalled once its pool exists",
    )
    waited = cli("wait", "orphan", "--timeout", "180")
    assert waited.returncode == 0 and "gj/orphan Succeeded" in waited.stdout, waited
    conditions = {c["type"]: c["status"] for c in fleet.get_job("orphan")["status"]["conditions"]}
    assert conditions == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}


def test_cp_downloads_artifacts_verified_against_the_bucket(
    cli: Cli, fleet: Fleet, bucket: Any, tmp_path: Path
) -> None:
    ready_pool(fleet)
    submitted = cli("submit", "-f", str(cli.manifest("harbour")), "--wait", "-o", "json")
    assert submitted.returncode == 0, submitted
    artifacts = json.loads(submitted.stdout)["status"]["artifacts"]
    assert artifacts

    copied = cli("cp", "gj/harbour", str(tmp_path / "out"))
    assert copied.returncode == 0, copied
    for artifact in artifacts:
        saved = (tmp_path / "out" / artifact["name"]).read_bytes()
        bucket_name, key = split_s3_url(artifact["url"])
        in_bucket = bucket.get_object(Bucket=bucket_name, Key=key)["Body"].read()
        assert saved == in_bucket
        assert hashlib.sha256(saved).hexdigest() == artifact["sha256"]
        assert f"{artifact['name']} (sha256 verified)" in copied.stdout

    url = cli("url", "gj/harbour", artifacts[0]["name"], "--expires", "120")
    assert url.returncode == 0, url
    fetched = httpx.get(url.stdout.strip(), timeout=30)
    assert (
        fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == artifacts[0]["sha256"]
    )

    no_credentials = {
        k: v for k, v in cli.env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")
    }
    no_credentials |= {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    for args in (("cp", "gj/harbour", str(tmp_path / "none")), ("url", "gj/harbour", artifacts[0]["name"])):
        refused = cli(*args, env=no_credentials)
        assert refused.returncode == 2 and "no S3 credentials" in refused.stderr, refused
    wrong_key = cli("cp", "gj/harbour", str(tmp_path / "none"), "--s3-secret-access-key", "wrong")
    assert wrong_key.returncode == 2 and "refused the credentials" in wrong_key.stderr, wrong_key
    missing = cli("url", "gj/harbour", "nope.png")
    assert missing.returncode == 2 and "has no artifact 'nope.png'" in missing.stderr

    # An object changed after the job wrote it is refused, and nothing is saved.
    bucket_name, key = split_s3_url(artifacts[0]["url"])
    bucket.put_object(Bucket=bucket_name, Key=key, Body=b"not the image the job made")
    tampered = cli("cp", "gj/harbour", str(tmp_path / "tampered"))
    assert tampered.returncode == 2 and "sha256" in tampered.stderr and "differs" in tampered.stderr
    assert [p.name for p in (tmp_path / "tampered").iterdir()] == []


def test_python_client_sync_and_async(
    cluster: Any, fleet: Fleet, s3_server: S3Server, tmp_path: Path
) -> None:
    ready_pool(fleet)
    sync = Client(namespace=fleet.namespace, api_client=cluster.api_client())
    job = sync.submit(job_manifest("pier", fleet.namespace))
    assert job.metadata["name"] == "pier"
    final = sync.wait("pier", timeout=180)
    assert final.status.phase == "Succeeded" and final.status.artifacts
    settings = S3Settings(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)

    async def pipeline() -> tuple[list[str], list[Path]]:
        aio = AsyncClient(sync)
        await aio.submit(job_manifest("jetty", fleet.namespace))
        phases = [str(seen.status.phase) async for seen in aio.watch(["jetty"], timeout=180)]
        return phases, await aio.download("jetty", tmp_path / "jetty", settings)

    phases, files = asyncio.run(pipeline())
    assert phases[-1] == "Succeeded"
    expected = {a.name: a.sha256 for a in sync.get("jetty").status.artifacts}
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == expected


def test_get_list_describe_top_cancel_wait_delete(cli: Cli, fleet: Fleet, tmp_path: Path) -> None:
    ready_pool(fleet)
    assert cli("submit", "-f", str(cli.manifest("long", steps=250, size=512, images=4))).returncode == 0
    fleet.wait_phase("long", "Running")
    if fleet.get_job("long")["status"].get("progress", {}).get("percent", 0) > 50:
        pytest.fail("the job to cancel is too short for this machine")

    table = cli("list")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "POOL", "PROGRESS", "REASON", "QUEUE", "WORKER", "AGE"]
    assert any(r.split()[:3] == ["long", "Running", "sd"] for r in rows), table.stdout
    assert json.loads(cli("get", "gj/long", "-o", "json").stdout)["metadata"]["name"] == "long"
    assert yaml.safe_load(cli("get", "long", "-o", "yaml").stdout)["spec"]["poolRef"]["name"] == "sd"
    assert cli("get", "-o", "name").stdout.split() == [f"generationjob.{GROUP}/long"]

    top = cli("top", "--once")
    assert top.returncode == 0, top
    assert "pool sd  workers 1/1 ready" in top.stdout
    assert re.search(r"\[#+=*\.*\] jobs \d+\.\dGi models 1\.0Gi free", top.stdout), top.stdout

    cancelled = cli("cancel", "long")
    assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout
    waited = cli("wait", "gj/long", "--timeout", "120")
    assert waited.returncode == 1 and "gj/long Cancelled: Cancelled" in waited.stdout, waited

    described = cli("describe", "long")
    assert described.returncode == 0
    for expected in ("Phase:", "Cancelled", "Conditions:", "Ready", "Artifacts:", "Events:"):
        assert expected in described.stdout, described.stdout
    assert "<none>" not in described.stdout.split("Events:")[1], "the operator's events are missing"

    # As a kubectl plugin.
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    plugin = plugins / "kubectl-gpufleet"
    plugin.write_text(f'#!/bin/sh\nexec {sys.executable} -m gpufleet.cli "$@"\n')
    plugin.chmod(0o755)
    env = {**cli.env, "PATH": f"{plugins}:{cli.env['PATH']}"}
    via_kubectl = subprocess.run(
        [str(binaries.ensure("kubectl")), "gpufleet", "get", "long", "-n", fleet.namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert via_kubectl.returncode == 0 and "Cancelled" in via_kubectl.stdout, via_kubectl

    assert cli("delete", "long").returncode == 0
    gone = cli("get", "long")
    assert gone.returncode == 2 and 'generationjobs.gpufleet.io "long" not found' in gone.stderr


def test_bad_input_gets_a_clear_error(cli: Cli, cluster: Any, fleet: Fleet, tmp_path: Path) -> None:
    missing = cli("submit", "-f", "no-such.yaml")
    assert missing.returncode == 2 and "no-such.yaml: no such file" in missing.stderr

    invalid = cli("submit", "-f", str(cli.manifest("bad", steps=0)))
    assert invalid.returncode == 2
    assert "spec.input.steps" in invalid.stderr and "greater than or equal to 1" in invalid.stderr, (
        invalid.stderr
    )

    unknown_field = job_manifest("typo", fleet.namespace)
    unknown_field["spec"]["priorty"] = 3
    typo = cli("submit", "-f", "-", stdin=yaml.safe_dump(unknown_field))
    assert typo.returncode == 2 and "priorty" in typo.stderr, typo.stderr

    garbage = cli("submit", "-f", "-", stdin="spec: [unclosed")
    assert garbage.returncode == 2 and "<stdin>: not valid YAML" in garbage.stderr
    pool = cli(
        "submit", "-f", "-", stdin=yaml.safe_dump({"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkerPool"})
    )
    assert pool.returncode == 2 and "kind is 'WorkerPool'" in pool.stderr

    for args in (
        ("get", "ghost"),
        ("describe", "ghost"),
        ("cancel", "ghost"),
        ("delete", "ghost"),
        ("wait", "ghost"),
        ("cp", "gj/ghost", str(tmp_path)),
    ):
        result = cli(*args)
        assert result.returncode == 2 and '"ghost" not found' in result.stderr, (args, result.stderr)
    wrong_kind = cli("get", "pod/ghost")
    assert wrong_kind.returncode == 2 and "not a GenerationJob" in wrong_kind.stderr

    # A user without RBAC: a ServiceAccount's token, bound to nothing.
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_service_account(
        fleet.namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody",
        fleet.namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    kubeconfig = tmp_path / "nobody.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": admin["clusters"],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "nobody",
                        "context": {
                            "cluster": admin["clusters"][0]["name"],
                            "user": "nobody",
                            "namespace": fleet.namespace,
                        },
                    }
                ],
                "current-context": "nobody",
            }
        )
    )
    as_nobody = {**cli.env, "KUBECONFIG": str(kubeconfig)}
    forbidden = cli("submit", "-f", str(cli.manifest("denied")), env=as_nobody)
    assert forbidden.returncode == 2
    assert "no permission to create generationjobs.gpufleet.io" in forbidden.stderr, forbidden.stderr
    assert "verb 'create' on resource 'generationjobs.gpufleet.io'" in forbidden.stderr
    listing = cli("list", env=as_nobody)
    assert listing.returncode == 2 and "verb 'list'" in listing.stderr
