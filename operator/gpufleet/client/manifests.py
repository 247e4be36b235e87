"""Reading GenerationJob manifests from files or stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from gpufleet.api.models import API_VERSION
from gpufleet.client.errors import ManifestError

KIND = "GenerationJob"


def read_source(path: str) -> tuple[str, str]:
    """(text, display name) of ``path``; ``-`` is stdin."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    file = Path(path)
    if not file.exists():
        raise ManifestError(f"{path}: no such file")
    if file.is_dir():
        raise ManifestError(f"{path}: is a directory; give one manifest file (or - for stdin)")
    try:
        return file.read_text(), path
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc


def parse_jobs(text: str, source: str) -> list[dict[str, Any]]:
    """The GenerationJob documents of a YAML (or JSON) stream, in order.

    Only the shape a request needs is checked here (kind, apiVersion, a name); the fields
    themselves are the API server's to judge, so its message is the one the user sees.
    """
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    if not documents:
        raise ManifestError(f"{source}: no manifest in it")
    jobs = []
    for number, document in enumerate(documents, start=1):
        where = f"{source} (document {number})"
        if not isinstance(document, dict):
            raise ManifestError(f"{where}: expected a mapping, got {type(document).__name__}")
        kind = document.get("kind")
        if kind != KIND:
            raise ManifestError(
                f"{where}: kind is {kind!r}; gpufleet submit takes GenerationJobs "
                "(apply pools with kubectl apply -f)"
            )
        if document.get("apiVersion") != API_VERSION:
            raise ManifestError(
                f"{where}: apiVersion must be {API_VERSION}, not {document.get('apiVersion')!r}"
            )
        metadata = document.get("metadata")
        if not isinstance(metadata, dict) or not (metadata.get("name") or metadata.get("generateName")):
            raise ManifestError(f"{where}: metadata.name (or metadata.generateName) is required")
        jobs.append(document)
    return jobs
