"""The worker image installs the base and its extras only: no Kubernetes client, kopf or numba."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPERATOR_MACHINERY = {"kubernetes", "kopf", "numba"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def _installed_extras(dockerfile: Path) -> list[str]:
    match = re.search(r'pip install [^"]*"\.\[([a-z,]+)\]"', dockerfile.read_text())
    assert match, f"{dockerfile} installs the project with extras"
    return match.group(1).split(",")


@pytest.mark.parametrize("image", ["builtin", "diffusers"])
def test_worker_images_install_no_operator_machinery(image):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = _installed_extras(REPO / "worker-images" / image / "Dockerfile")
    assert "worker" in extras
    installed = _names(project["dependencies"])
    for extra in extras:
        installed |= _names(project["optional-dependencies"][extra])
    assert installed & OPERATOR_MACHINERY == set()


def test_the_operator_and_the_client_get_the_kubernetes_client():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "kubernetes" in _names(extras["operator"])
    assert "kubernetes" in _names(extras["client"])
