"""Model sources: s3:// downloaded into a bounded disk cache, pvc:// read where the claim is
mounted, file:// and builtin:// served as they are; an optional digest checked before use.

A download goes into a ``.partial-*`` folder inside the cache and is renamed into place
only once every object arrived whole and the digest (when given) matched, so the loader
never reads half a model. A worker killed mid-download leaves only a ``.partial-*`` folder,
which the next worker on the same cache removes when it starts.

The digest is ``sha256:`` and the sha256 of the model's *manifest*: one line
``<sha256 of the file>  <path relative to the model folder>`` per file, sorted by path
(bytewise), each ending in a newline — exactly what ``sha256sum`` prints, so in a model
folder ``find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum``
gives it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gpufleet.api.servedmodels import (
    BUILTIN_SCHEME,
    FILE_SCHEME,
    PVC_SCHEME,
    S3_SCHEME,
    pvc_claim,
    pvc_mount_path,
)

from .artifacts import split_s3_uri
from .config import ModelSpec
from .modelcache import CachedModel, choose_evictions
from .modelfiles import FetchProgress, ModelSourceError, SourceProblem
from .protocol import ModelCacheInfo

log = logging.getLogger("gpufleet_worker.sources")

PARTIAL_PREFIX = ".partial-"
CHUNK_BYTES = 1 << 20


def manifest_digest(file_hashes: Mapping[str, str]) -> str:
    """``sha256:<hex>`` of the manifest of files given as relative path -> sha256 hex."""
    lines = "".join(f"{file_hashes[path]}  {path}\n" for path in sorted(file_hashes, key=str.encode))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` (or ``root`` itself when it is a file)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file())


def local_digest(root: Path) -> str:
    """The manifest digest of a local model folder (or single file)."""
    base = root.parent if root.is_file() else root
    return manifest_digest({p.relative_to(base).as_posix(): file_sha256(p) for p in folder_files(root)})


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in folder_files(root))


def _file_source(path: str) -> str:
    return FILE_SCHEME + path  # path is absolute: file:///...


def _relative_key(key: str, prefix: str, source: str, model: str) -> str:
    """An object's path inside the model folder; refuses keys that would leave it."""
    relative = key[len(prefix) :]
    parts = PurePosixPath(relative).parts
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in relative.split("/")):
        raise ModelSourceError(
            f"model {model}: {source}: object key {key!r} is not a plain relative path",
            SourceProblem.BAD_OBJECT_KEY,
        )
    return str(PurePosixPath(*parts))


@dataclass
class _Entry:
    """A complete model in the disk cache."""

    folder: Path
    size_bytes: int
    last_used: float


def _describe_s3_error(error: Exception) -> str:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return (
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a cluster, the "
            "operator's --worker-s3-secret)"
        )
    if isinstance(error, EndpointConnectionError):
        return f"S3 endpoint unreachable: {error}"
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return "the bucket does not exist (NoSuchBucket)"
        if code == "NoSuchKey":
            return "an object vanished while it was downloaded (NoSuchKey)"
        return f"{code or 'S3 error'}: {error}"
    return f"{type(error).__name__}: {error}"


class DiskModelFiles:
    """ModelFiles for every source kind, with a disk cache for s3:// models.

    ``loading`` names the models whose files a load onto a GPU may be reading now; with the
    models being fetched here, they are "in use" and never evicted from the disk cache.
    """

    def __init__(
        self,
        s3_client: Any,
        cache_path: Path | None,
        capacity_bytes: int,
        pvc_mounts: Mapping[str, Path] | None = None,
        loading: Callable[[], Collection[str]] = frozenset,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s3 = s3_client
        self._cache = cache_path
        self._capacity = capacity_bytes
        self._pvc_mounts = dict(pvc_mounts or {})
        self._loading = loading
        self._clock = clock
        self._lock = threading.Lock()
        self._model_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, _Entry] = {}  # cache folder name -> entry
        self._fetching: dict[str, int] = {}  # cache folder name -> bytes reserved for its download
        # (local folder, digest) -> the files (path, size, mtime) that matched it
        self._verified: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = {}
        if cache_path is not None:
            self._open_cache(cache_path)

    def _open_cache(self, root: Path) -> None:
        """Removes interrupted downloads and indexes the complete models found."""
        root.mkdir(parents=True, exist_ok=True)
        for child in root.iterdir():
            if child.name.startswith(PARTIAL_PREFIX):
                log.info("removing an interrupted download: %s", child)
                shutil.rmtree(child, ignore_errors=True)
            elif child.is_dir():
                self._entries[child.name] = _Entry(child, folder_bytes(child), child.stat().st_mtime)

    # --- ModelFiles ---------------------------------------------------------------------------

    def local(self, spec: ModelSpec, on_progress: FetchProgress) -> ModelSpec:
        source = spec.source
        if source.startswith(BUILTIN_SCHEME):
            return spec
        if source.startswith(FILE_SCHEME):
            folder = Path(source[len(FILE_SCHEME) :])
            self._check_local(spec, folder)
            return spec
        if source.startswith(PVC_SCHEME):
            claim, path = pvc_claim(source)
            folder = Path(self._pvc_mounts.get(claim, pvc_mount_path(claim))) / path
            self._check_local(spec, folder)
            return spec.model_copy(update={"source": _file_source(str(folder.resolve()))})
        if source.startswith(S3_SCHEME):
            return spec.model_copy(update={"source": _file_source(str(self._fetch(spec, on_progress)))})
        raise ModelSourceError(f"model {spec.name}: unsupported source {source!r}", SourceProblem.UNSUPPORTED)

    def on_disk_bytes(self, spec: ModelSpec) -> int | None:
        if not spec.source.startswith(S3_SCHEME):
            return 0
        with self._lock:
            entry = self._entries.get(self._entry_name(spec))
            return entry.size_bytes if entry else None

    def cache_info(self) -> ModelCacheInfo | None:
        if self._cache is None:
            return None
        with self._lock:
            used = sum(e.size_bytes for e in self._entries.values())
        return ModelCacheInfo(path=str(self._cache), capacity_bytes=self._capacity, used_bytes=used)

    # --- local folders (file://, pvc://) ---------------------------------------------------

    def _check_local(self, spec: ModelSpec, folder: Path) -> None:
        if not folder.exists():
            raise ModelSourceError(
                f"model {spec.name}: {spec.source}: nothing at {folder}", SourceProblem.NOT_FOUND
            )
        if spec.digest is None:
            return
        # Checked once per set of files (paths, sizes, modification times), not on every load.
        files = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder_files(folder))
        if self._verified.get((str(folder), spec.digest)) == files:
            return
        got = local_digest(folder)
        if got != spec.digest:
            raise ModelSourceError(
                f"model {spec.name}: {spec.source}: digest mismatch: the files at {folder} have {got}, "
                f"the pool says {spec.digest}",
                SourceProblem.DIGEST_MISMATCH,
            )
        self._verified[(str(folder), spec.digest)] = files

    # --- s3:// --------------------------------------------------------------------------------

    def _entry_name(self, spec: ModelSpec) -> str:
        key = hashlib.sha256(f"{spec.source}\n{spec.digest or ''}".encode()).hexdigest()[:16]
        return f"{spec.name}-{key}"

    def _fetch(self, spec: ModelSpec, on_progress: FetchProgress) -> Path:
        assert self._cache is not None  # WorkerConfig requires modelCache.path for s3:// models
        name = self._entry_name(spec)
        with self._lock:
            model_lock = self._model_locks.setdefault(name, threading.Lock())
        # One download per model: a second caller waits and then finds it cached.
        with model_lock:
            with self._lock:
                entry = self._entries.get(name)
                if entry is not None:
                    entry.last_used = self._clock()
                    os.utime(entry.folder)  # the order survives a restart of the worker
                    return entry.folder
            return self._download(spec, name, on_progress)

    def _list(self, spec: ModelSpec, bucket: str, prefix: str) -> list[tuple[str, int]]:
        objects: list[tuple[str, int]] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                objects += [
                    (o["Key"], o["Size"]) for o in page.get("Contents", []) if not o["Key"].endswith("/")
                ]
        except Exception as error:  # botocore raises many types; all mean "cannot list"
            raise ModelSourceError(
                f"model {spec.name}: {spec.source}: {_describe_s3_error(error)}", SourceProblem.STORE
            ) from error
        if not objects:
            raise ModelSourceError(
                f"model {spec.name}: {spec.source}: no objects under s3://{bucket}/{prefix} "
                "(the prefix is empty or does not exist)",
                SourceProblem.EMPTY_PREFIX,
            )
        return objects

    def _download(self, spec: ModelSpec, name: str, on_progress: FetchProgress) -> Path:
        assert self._cache is not None
        bucket, key = split_s3_uri(spec.source)
        prefix = key.rstrip("/") + "/"  # a source names a folder of objects
        objects = self._list(spec, bucket, prefix)
        total = sum(size for _, size in objects)
        self._reserve(spec, name, total)
        partial = self._cache / f"{PARTIAL_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}"
        try:
            hashes = self._download_objects(spec, bucket, prefix, objects, partial, total, on_progress)
            if spec.digest is not None and (got := manifest_digest(hashes)) != spec.digest:
                raise ModelSourceError(
                    f"model {spec.name}: {spec.source}: digest mismatch: the objects have {got}, "
                    f"the pool says {spec.digest}",
                    SourceProblem.DIGEST_MISMATCH,
                )
            folder = self._cache / name
            partial.rename(folder)  # whole and verified, or not there at all
            with self._lock:
                self._entries[name] = _Entry(folder, total, self._clock())
            log.info("model %s: %d bytes from %s cached in %s", spec.name, total, spec.source, folder)
            return folder
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            with self._lock:
                self._fetching.pop(name, None)

    def _reserve(self, spec: ModelSpec, name: str, need: int) -> None:
        """Makes room for ``need`` bytes, evicting least recently used models not in use."""
        loading = set(self._loading())
        with self._lock:
            busy = loading | {n.rsplit("-", 1)[0] for n in self._fetching}
            cached = [
                CachedModel(
                    entry_name,
                    e.size_bytes,
                    e.last_used,
                    in_use=1 if entry_name.rsplit("-", 1)[0] in busy else 0,
                )
                for entry_name, e in self._entries.items()
            ]
            used = sum(e.size_bytes for e in self._entries.values()) + sum(self._fetching.values())
            evict = choose_evictions(cached, need, self._capacity - used)
            if evict is None:
                in_use = sorted(c.name.rsplit("-", 1)[0] for c in cached if not c.evictable)
                raise ModelSourceError(
                    f"model {spec.name}: {spec.source}: needs {need} bytes in the model cache, which "
                    f"holds {self._capacity} bytes with {used} used; models in use cannot be removed"
                    + (f" ({', '.join(in_use)})" if in_use else ""),
                    SourceProblem.CACHE_FULL,
                )
            removed = [self._entries.pop(entry_name) for entry_name in evict]
            self._fetching[name] = need
        for entry in removed:
            log.info("model cache: evicting %s (%d bytes)", entry.folder.name, entry.size_bytes)
            shutil.rmtree(entry.folder, ignore_errors=True)

    def _download_objects(
        self,
        spec: ModelSpec,
        bucket: str,
        prefix: str,
        objects: list[tuple[str, int]],
        partial: Path,
        total: int,
        on_progress: FetchProgress,
    ) -> dict[str, str]:
        done = 0
        hashes: dict[str, str] = {}
        on_progress(0, total)
        for key, size in objects:
            relative = _relative_key(key, prefix, spec.source, spec.name)
            target = partial / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            written = 0
            try:
                body = self._s3.get_object(Bucket=bucket, Key=key)["Body"]
                with target.open("wb") as file:
                    while chunk := body.read(CHUNK_BYTES):
                        file.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        on_progress(done + written, total)
            except Exception as error:  # network, S3 and disk errors all end this download
                raise ModelSourceError(
                    f"model {spec.name}: {spec.source}: downloading {key}: {_describe_s3_error(error)}",
                    SourceProblem.STORE,
                ) from error
            if written != size:
                raise ModelSourceError(
                    f"model {spec.name}: {spec.source}: {key} came to {written} bytes, listed as {size}",
                    SourceProblem.INCOMPLETE,
                )
            done += size
            hashes[relative] = digest.hexdigest()
        return hashes
