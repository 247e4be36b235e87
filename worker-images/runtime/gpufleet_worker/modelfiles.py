"""Where a model's files come from before the loader reads them.

The engine asks its ``ModelFiles`` for a model's local files before every load onto a GPU.
``LocalModelFiles`` serves sources that are already local (``builtin://``, ``file://``);
sources that must be fetched first (``s3://``, ``pvc://``) are served by an implementation
that keeps a disk cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .config import ModelSpec
from .protocol import ModelCacheInfo

# Called with (bytes downloaded so far, total bytes when known) while files are fetched.
FetchProgress = Callable[[int, int | None], None]


class ModelSourceError(Exception):
    """A model's source cannot be used: missing, unreachable, or its digest does not match.

    The message names the model and the cause; the engine marks the model Failed with it.
    """


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
