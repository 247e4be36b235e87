"""What a served model may be named and where it may come from: one rule for both sides.

The API (WorkerPool ``models[]``, GenerationJob ``spec.model``) puts these patterns and
rules into the CRDs, and the worker checks its config's models with the same ones, so a
pool the API server accepts is a pool its workers start with. Standard library only: the
worker imports this without the operator's dependencies.
"""

from __future__ import annotations

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

# The schemes the gpufleet worker loads by itself; s3:// and pvc:// models must first be
# copied into a directory the pod mounts (a custom image may read them itself).
WORKER_SOURCE_SCHEMES = (BUILTIN_SCHEME, FILE_SCHEME)
_COPY_FIRST = "copy s3:// and pvc:// models into a directory the worker mounts"
WORKER_SOURCE_RULE = f"the gpufleet worker loads builtin:// and file:/// sources only; {_COPY_FIRST}"
DIFFUSERS_SOURCE_RULE = f"runtime diffusers loads file:/// sources only; {_COPY_FIRST}"


def worker_loads(source: str) -> bool:
    """Whether the gpufleet worker can load a model from ``source`` by itself."""
    return source.startswith(WORKER_SOURCE_SCHEMES)
