"""The Argo CD example: Applications that point at paths of this repository, with chart
values the chart accepts, and no job in git that the operator's TTL would delete and Argo CD
would then re-create."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "argocd" / "gpufleet.yaml"


def applications() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert all(d["apiVersion"] == "argoproj.io/v1alpha1" and d["kind"] == "Application" for d in docs)
    return {d["metadata"]["name"]: d for d in docs}


def test_applications_point_at_the_chart_and_the_team_directory():
    apps = applications()
    assert set(apps) == {"gpufleet", "gpufleet-studio"}
    for app in apps.values():
        assert (REPO_ROOT / app["spec"]["source"]["path"]).is_dir()
        assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert apps["gpufleet"]["spec"]["source"]["path"] == "charts/gpufleet"


def test_chart_values_are_accepted(render):
    values = applications()["gpufleet"]["spec"]["source"]["helm"]["valuesObject"]
    docs = render(values)
    assert any(d["kind"] == "Deployment" for d in docs)
    assert values["tokenKey"]["existingSecret"], "Argo CD renders offline: the token key must be named"


def test_no_job_synced_from_git_sets_a_ttl():
    path = REPO_ROOT / applications()["gpufleet-studio"]["spec"]["source"]["path"]
    for file in sorted(Path(path).glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if doc and doc.get("kind") == "GenerationJob":
                assert "ttlSecondsAfterFinished" not in doc["spec"], file
