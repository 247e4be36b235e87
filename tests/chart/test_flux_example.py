"""The Flux example: valid manifests that point at this chart and at resources that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpufleet.api.models import WorkerPool

from .conftest import REPO_ROOT

FLUX = REPO_ROOT / "examples" / "flux"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for d in documents(FLUX / "gpufleet.yaml") if d["kind"] == kind]
    return doc


def test_every_example_file_is_valid_yaml_with_kind_and_api_version():
    files = sorted(FLUX.rglob("*.yaml"))
    assert len(files) == 4
    for path in files:
        for doc in documents(path):
            assert doc.get("apiVersion") and doc.get("kind"), path


def test_helm_release_installs_this_chart_with_values_it_accepts(render):
    release = by_kind("HelmRelease")
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert (REPO_ROOT / chart["chart"] / "Chart.yaml").exists()
    assert chart["sourceRef"] == {
        "kind": "GitRepository",
        "name": by_kind("GitRepository")["metadata"]["name"],
    }
    docs = render(release["spec"]["values"])  # refused values would fail here
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == "studio"]
    assert roles, "the example's watched namespace gets the operator's Role"


def test_kustomization_health_checks_name_what_it_applies():
    kustomization = by_kind("Kustomization")
    path = REPO_ROOT / kustomization["spec"]["path"]
    build = documents(path / "kustomization.yaml")[0]
    applied = [doc for name in build["resources"] for doc in documents(path / name)]
    namespace = build["namespace"]
    checks = kustomization["spec"]["healthChecks"]
    pools = [c for c in checks if c["kind"] == "WorkerPool"]
    assert pools
    for check in pools:
        assert check["namespace"] == namespace
        [pool] = [d for d in applied if d["kind"] == "WorkerPool" and d["metadata"]["name"] == check["name"]]
        assert check["apiVersion"] == pool["apiVersion"]
        WorkerPool.model_validate(pool)
    [release] = [c for c in checks if c["kind"] == "HelmRelease"]
    assert release["name"] == by_kind("HelmRelease")["metadata"]["name"]
