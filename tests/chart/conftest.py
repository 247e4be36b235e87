"""Helpers for the chart tests: helm (built from its Go module), rendering, hack/ scripts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gpufleet.localcluster import binaries

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "gpufleet"
RELEASE = "gf"
RELEASE_NAMESPACE = "gpufleet-system"


@pytest.fixture(scope="session")
def hack_module() -> Callable[[str], ModuleType]:
    """Imports a script under hack/ as a module (hack/ is not a package)."""
    return load_hack_module


def load_hack_module(name: str) -> ModuleType:
    path = REPO_ROOT / "hack" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hack_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helm() -> Path:
    return binaries.ensure("helm")


def helm_set_args(values: dict[str, Any]) -> list[str]:
    """--set-json arguments for dotted keys, e.g. {"watchNamespaces": ["a"]}."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="session")
def helm_template(helm: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `helm template` with values set by --set-json; returns the completed process."""

    def run(values: dict[str, Any] | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(helm),
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                RELEASE_NAMESPACE,
                *helm_set_args(values or {}),
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    return run


@pytest.fixture(scope="session")
def render(
    helm_template: Callable[..., subprocess.CompletedProcess[str]],
) -> Callable[..., list[dict[str, Any]]]:
    """The chart's manifests for ``values``; fails the test with helm's message if it refuses."""

    def run(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
        result = helm_template(values, *extra)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run
