"""The client's pure parts: manifests, names, error messages, what the CLI prints, and that
the CLI and client import none of the operator's or worker's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpufleet import cli
from gpufleet.api.models import GenerationJob, GpuStatus, WorkerPool
from gpufleet.client import commands, render
from gpufleet.client.errors import ForbiddenError, InvalidError, ManifestError, NotFoundError, api_error
from gpufleet.client.jobs import Event, finished, stalled
from gpufleet.client.manifests import parse_jobs, read_source

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[2]


def job(status: dict | None = None, name: str = "lighthouse", generation: int = 1) -> GenerationJob:
    return GenerationJob.model_validate(
        {
            "apiVersion": "gpufleet.io/v1alpha1",
            "kind": "GenerationJob",
            "metadata": {
                "name": name,
                "namespace": "studio",
                "generation": generation,
                "creationTimestamp": (NOW - timedelta(minutes=5)).isoformat(),
            },
            "spec": {
                "poolRef": {"name": "sd"},
                "task": "text-to-image",
                "model": "tiny-sd",
                "input": {"prompt": "a lighthouse"},
                "output": {"uri": "s3://bucket/out/"},
            },
            "status": status or {},
        }
    )


def condition(type_: str, status: str, reason: str = "R", generation: int = 1) -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": "m",
        "observedGeneration": generation,
        "lastTransitionTime": NOW.isoformat(),
    }


ARTIFACT = {
    "name": "image-0.png",
    "url": "s3://bucket/out/lighthouse/image-0.png",
    "mediaType": "image/png",
    "sizeBytes": 10,
    "sha256": "a" * 64,
}


def test_the_cli_and_client_import_nothing_heavy() -> None:
    probe = (
        "import sys, gpufleet.cli, gpufleet.client, gpufleet.client.artifacts, gpufleet.client.commands\n"
        "heavy = {'kopf', 'numba', 'numpy', 'torch', 'prometheus_client', 'cryptography',\n"
        "         'gpufleet.controller', 'gpufleet.localcluster', 'gpufleet.core'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_client_extra_and_operator_extra_split_the_dependencies() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for heavy in ("kopf", "numba", "numpy", "torch", "cryptography"):
        assert heavy not in base
    assert any(d.startswith("boto3") for d in project["optional-dependencies"]["client"])
    assert any(d.startswith("kopf") for d in project["optional-dependencies"]["operator"])
    assert project["scripts"]["kubectl-gpufleet"] == project["scripts"]["gpufleet"] == "gpufleet.cli:main"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no manifest in it"),
        ("spec: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping, got list"),
        ("kind: WorkerPool\napiVersion: gpufleet.io/v1alpha1\n", "kind is 'WorkerPool'"),
        ("kind: GenerationJob\napiVersion: gpufleet.io/v1\n", "apiVersion must be gpufleet.io/v1alpha1"),
        ("kind: GenerationJob\napiVersion: gpufleet.io/v1alpha1\nmetadata: {}\n", "metadata.name"),
    ],
)
def test_manifests_that_are_not_jobs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_jobs(text, "job.yaml")


def test_several_jobs_and_generate_name() -> None:
    text = (
        "kind: GenerationJob\napiVersion: gpufleet.io/v1alpha1\nmetadata: {name: a}\n---\n"
        "kind: GenerationJob\napiVersion: gpufleet.io/v1alpha1\nmetadata: {generateName: b-}\n"
    )
    assert [d["metadata"] for d in parse_jobs(text, "x")] == [{"name": "a"}, {"generateName": "b-"}]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.yaml: no such file"):
        read_source(str(tmp_path / "nope.yaml"))
    with pytest.raises(ManifestError, match="is a directory"):
        read_source(str(tmp_path))


@pytest.mark.parametrize(
    ("argument", "name"),
    [("x", "x"), ("gj/x", "x"), ("generationjob/x", "x"), ("generationjob.gpufleet.io/x", "x")],
)
def test_job_names(argument: str, name: str) -> None:
    assert commands.job_name(argument) == name


def test_api_errors_name_what_is_wrong() -> None:
    def exc(status: int, message: str) -> SimpleNamespace:
        return SimpleNamespace(status=status, reason="r", body=f'{{"message": "{message}"}}')

    not_found = api_error(exc(404, "x"), "get", "generationjobs.gpufleet.io", "studio", "ghost")
    assert isinstance(not_found, NotFoundError)
    assert str(not_found) == 'generationjobs.gpufleet.io "ghost" not found in namespace "studio"'
    forbidden = api_error(
        exc(403, "User bob cannot create"), "create", "generationjobs.gpufleet.io", "studio"
    )
    assert isinstance(forbidden, ForbiddenError)
    assert "verb 'create' on resource 'generationjobs.gpufleet.io'" in str(forbidden)
    assert "User bob cannot create" in str(forbidden) and "'edit' role" in str(forbidden)
    invalid = api_error(
        exc(422, "spec.input.steps: Invalid value"), "create", "generationjobs.gpufleet.io", "s"
    )
    assert isinstance(invalid, InvalidError) and str(invalid) == "spec.input.steps: Invalid value"


def test_finished_means_terminal_or_stalled_for_this_generation() -> None:
    assert not finished(job({"phase": "Running"}))
    assert finished(job({"phase": "Failed"}))
    pending = {"phase": "Pending", "conditions": [condition("Stalled", "True", "PoolNotFound")]}
    assert stalled(job(pending)) and finished(job(pending))
    assert not stalled(job(pending, generation=2)), "a Stalled written for an older generation is stale"


def test_progress_line_shows_phase_bar_steps_queue_worker_and_gpu() -> None:
    queued = render.progress_line(job({"phase": "Queued", "queuePosition": 3}))
    assert queued.startswith("gj/lighthouse  Queued ") and "queue position 3" in queued and "  0%" in queued
    running = render.progress_line(
        job(
            {
                "phase": "Running",
                "progress": {"percent": 50, "step": 15, "totalSteps": 30},
                "worker": {"pod": "sd-0", "gpu": "GPU-1"},
            }
        )
    )
    assert "[" + "#" * 12 + "-" * 12 + "]" in running
    assert " 50%" in running and "step 15/30" in running and "on sd-0 gpu GPU-1" in running
    stuck = render.progress_line(job({"phase": "Pending", "reason": "Unschedulable"}))
    assert "(Unschedulable)" in stuck
    dispatched = render.progress_line(job({"phase": "Dispatched", "reason": "Dispatched"}))
    assert "(" not in dispatched, "a reason that only repeats the phase is left out"


def test_outcome_lines() -> None:
    done = job(
        {
            "phase": "Succeeded",
            "artifacts": [ARTIFACT],
            "startTime": NOW.isoformat(),
            "completionTime": (NOW + timedelta(seconds=12)).isoformat(),
        }
    )
    assert render.outcome_line(done) == (
        "gj/lighthouse Succeeded in 12s: 1 artifact: s3://bucket/out/lighthouse/image-0.png"
    )
    failed = job(
        {
            "phase": "Failed",
            "reason": "OutOfMemory",
            "message": "CUDA out of memory",
            "conditions": [condition("Stalled", "True", "OutOfMemory")],
        }
    )
    assert render.outcome_line(failed) == "gj/lighthouse Failed: OutOfMemory: CUDA out of memory"


def test_job_table_is_aligned_like_kubectl() -> None:
    jobs = [
        job({"phase": "Queued", "reason": "Queued", "queuePosition": 0}, name="a"),
        job({"phase": "Running", "progress": {"percent": 7}, "worker": {"pod": "sd-1"}}, name="long-name"),
    ]
    text = render.job_rows(jobs, NOW, all_namespaces=True, wide=False)
    assert text.splitlines() == [
        "NAMESPACE   NAME        PHASE     POOL   PROGRESS   REASON   QUEUE   WORKER   AGE",
        "studio      a           Queued    sd                Queued   0                5m",
        "studio      long-name   Running   sd     7%                          sd-1     5m",
    ]


def test_age() -> None:
    assert [render.age(NOW - timedelta(seconds=s), NOW) for s in (5, 119, 150, 7300, 90000)] == [
        "5s",
        "119s",
        "2m",
        "2h",
        "1d",
    ]


def test_describe_has_conditions_artifacts_and_events() -> None:
    described = render.describe(
        job(
            {
                "phase": "Succeeded",
                "conditions": [condition("Ready", "True", "Completed")],
                "artifacts": [ARTIFACT],
            }
        ),
        [Event("Normal", "Dispatched", "sent to sd-0", 1, "")],
        NOW,
    )
    assert "Phase:" in described and "Succeeded" in described
    assert "Ready   True     Completed" in described
    assert "image-0.png" in described and "sent to sd-0" in described


def test_top_draws_vram_of_jobs_models_and_free() -> None:
    pool = WorkerPool.model_validate(
        {
            "metadata": {"name": "sd"},
            "spec": {
                "image": "w:1",
                "models": [{"name": "tiny-sd", "source": "builtin://tiny-sd", "vram": "2Gi"}],
                "tasks": ["text-to-image"],
            },
            "status": {
                "readyReplicas": 1,
                "desiredReplicas": 2,
                "queueDepth": 1,
                "conditions": [condition("Ready", "False", "WorkersStarting")],
                "workers": [
                    {
                        "pod": "sd-0",
                        "ready": True,
                        "loadedModels": ["tiny-sd"],
                        "gpus": [
                            {"id": "GPU-1", "product": "A100", "memoryTotal": "8Gi", "memoryReserved": "2Gi"}
                        ],
                    }
                ],
            },
        }
    )
    queued = job({"phase": "Queued", "queuePosition": 0}, name="next")
    screen = render.top([pool], [queued], NOW)
    assert "pool sd  workers 1/2 ready  queue 1  running 0  not ready: WorkersStarting" in screen
    assert "queue: 0:next" in screen
    assert "[" + "#" * 8 + "=" * 8 + "." * 14 + "] jobs 2.0Gi models 2.0Gi free 4.0Gi of 8.0Gi" in screen
    # The operator's split of the reserved memory, where the status has it.
    pool.status.workers[0].gpus[0] = GpuStatus.model_validate(
        {
            "id": "GPU-1",
            "product": "A100",
            "memoryTotal": "8Gi",
            "memoryReserved": "3Gi",
            "memoryModels": "2Gi",
            "memoryJobs": "1Gi",
            "models": ["tiny-sd"],
        }
    )
    screen = render.top([pool], [queued], NOW)
    assert "[" + "#" * 4 + "=" * 8 + "." * 18 + "] jobs 1.0Gi models 2.0Gi free 5.0Gi of 8.0Gi" in screen


def test_bash_completion_knows_commands_and_flags(tmp_path: Path) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0
    probe = tmp_path / "probe.sh"
    probe.write_text(
        script + 'COMP_WORDS=(gpufleet su); COMP_CWORD=1; _gpufleet; echo "${COMPREPLY[@]}"\n'
        'COMP_WORDS=(gpufleet submit --wa); COMP_CWORD=2; _gpufleet; echo "${COMPREPLY[@]}"\n'
    )
    lines = subprocess.run(
        ["bash", str(probe)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert lines == ["submit", "--wait --watch"]


def test_the_operator_command_keeps_its_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["operator", "--help"])
    assert exit_.value.code == 0
    assert "--token-key-file" in capsys.readouterr().out
