"""What a served model may be named and where it may come from: one rule for both sides.

The API (WorkerPool ``models[]``, GenerationJob ``spec.model``) puts these patterns and
rules into the CRDs, and the worker checks its config's models with the same ones, so a
pool the API server accepts is a pool its workers start with. Standard library only: the
worker imports this without the operator's dependencies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpufleet.api.outputs import S3_BUCKET_PATTERN

MAX_MODEL_NAME_CHARS = 128
# Lower case, no '/': a model name is a metric label value, a path segment and a flag value.
MODEL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"

MAX_MODEL_SOURCE_CHARS = 2048
BUILTIN_SCHEME = "builtin://"
FILE_SCHEME = "file://"
S3_SCHEME = "s3://"
PVC_SCHEME = "pvc://"

# No space, control character or ',': the operator hands each model to the worker as one
# ``--model name=...,source=...,vram=...`` flag. Explicit ranges, not \s, which RE2 (the API
# server) and Python (the worker) define differently.
_PATH = r"[^\x00-\x20,\x7f]"
MODEL_SOURCE_PATTERN = (
    r"^(builtin://[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
    rf"|file:///{_PATH}+"
    rf"|s3://{S3_BUCKET_PATTERN}/{_PATH}+"
    rf"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/{_PATH}*)$"
)

# pvc:// models are read from the claim mounted read-only at PVC_MOUNT_ROOT/<claim> in the
# worker pod; s3:// models are downloaded into the model cache volume at MODEL_CACHE_PATH.
# The operator's pod builder mounts there and the worker reads there: one place for both.
PVC_MOUNT_ROOT = "/var/lib/gpufleet/claims"
MODEL_CACHE_PATH = "/var/cache/gpufleet/models"
DEFAULT_MODEL_CACHE_SIZE = "50Gi"

# A model's files, checked before use: sha256 of its manifest (see gpufleet_worker.sources).
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DIGEST_NEEDS_FILES_RULE = "digest: builtin:// models have no files to check; remove the digest"


@dataclass(frozen=True)
class SourceRule:
    refused: str  # a source this matches can never be served (RE2 and Python read it alike)
    message: str


SOURCE_RULES = (
    SourceRule(
        r"^pvc://[^/]*/(.*/)?\.\.?(/|$)",
        "pvc:// paths must not have '.' or '..' segments: a model is read inside its claim",
    ),
)


def pvc_claim(source: str) -> tuple[str, str]:
    """``pvc://claim/some/path`` as ("claim", "some/path")."""
    claim, _, path = source[len(PVC_SCHEME) :].partition("/")
    return claim, path


def pvc_mount_path(claim: str) -> str:
    """Where a worker pod has ``claim`` mounted (read-only)."""
    return f"{PVC_MOUNT_ROOT}/{claim}"


def source_problems(source: str) -> list[str]:
    """Why no gpufleet worker can ever serve a model from ``source``; empty when one can."""
    return [rule.message for rule in SOURCE_RULES if re.search(rule.refused, source)]
