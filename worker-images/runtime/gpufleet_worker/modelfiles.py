"""Where a model's files come from before the loader reads them.

The engine asks its ``ModelFiles`` for a model's local files before every load onto a GPU.
``LocalModelFiles`` serves sources that are already local (``builtin://``, ``file://``);
sources that must be fetched first (``s3://``, ``pvc://``) are served by an implementation
that keeps a disk cache.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Protocol

from .config import ModelSpec
from .protocol import ModelCacheInfo

# Called with (bytes downloaded so far, total bytes when known) while files are fetched.
FetchProgress = Callable[[int, int | None], None]


class SourceProblem(StrEnum):
    """What went wrong with a model's source; `modelretry.is_transient` decides what is retried."""

    UNSUPPORTED = "Unsupported"  # a source scheme this worker does not read
    NOT_FOUND = "NotFound"  # a local path (file://, pvc://) with nothing at it
    DIGEST_MISMATCH = "DigestMismatch"
    BAD_OBJECT_KEY = "BadObjectKey"  # an object key that would leave the model folder
    EMPTY_PREFIX = "EmptyPrefix"  # no objects under an s3:// prefix (yet)
    INCOMPLETE = "Incomplete"  # an object came to another size than listed (changed mid-download)
    CACHE_FULL = "CacheFull"  # the disk cache is full of models in use
    STORE = "Store"  # the object store's own error, which the exception's __cause__ carries


class ModelSourceError(Exception):
    """A model's source cannot be used: missing, unreachable, or its digest does not match.

    The message names the model and the cause; the engine marks the model Failed with it.
    ``problem`` says what happened, so the engine can tell a cause worth retrying.
    """

    def __init__(self, message: str, problem: SourceProblem) -> None:
        super().__init__(message)
        self.problem = problem


class ModelFiles(Protocol):
    def local(self, spec: ModelSpec, on_progress: FetchProgress) -> ModelSpec:
        """The spec with a source the loader reads directly (builtin:// or file:///), fetching
        and verifying files first where needed. Blocks; raises ModelSourceError."""
        ...

    def on_disk_bytes(self, spec: ModelSpec) -> int | None:
        """Bytes of the model's files held locally, 0 when local without a cache (image,
        volume, built in), None when a load would have to download them."""
        ...

    def cache_info(self) -> ModelCacheInfo | None: ...


class LocalModelFiles:
    """builtin:// and file:// sources: nothing to fetch."""

    def local(self, spec: ModelSpec, on_progress: FetchProgress) -> ModelSpec:
        return spec

    def on_disk_bytes(self, spec: ModelSpec) -> int | None:
        return 0

    def cache_info(self) -> ModelCacheInfo | None:
        return None
