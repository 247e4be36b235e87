"""Builds the control-plane binaries from their Go modules at pinned versions, once.

Each tool set is a small wrapper Go module under ``hack/tools/<set>/`` whose go.mod and
go.sum pin the exact versions. Binaries land in a per-user cache keyed by a hash of those
files, so a version bump rebuilds and everything else reuses the cache.

    python -m gpufleet.localcluster.binaries            # build all, print timings
    python -m gpufleet.localcluster.binaries etcd helm  # build some
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
TOOLS_DIR = REPO_ROOT / "hack" / "tools"


@dataclass(frozen=True)
class ToolSet:
    """A wrapper module and the commands it builds (binary name -> Go package)."""

    name: str
    commands: dict[str, str]
    tags: tuple[str, ...] = ()  # Go build tags, to leave out parts the tests never use

    @property
    def module_dir(self) -> Path:
        return TOOLS_DIR / self.name

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for file in ("go.mod", "go.sum"):
            digest.update((self.module_dir / file).read_bytes())
        digest.update(",".join(self.tags).encode())
        return digest.hexdigest()[:12]


TOOL_SETS = {
    toolset.name: toolset
    for toolset in (
        ToolSet(
            "kubernetes",
            {
                "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
                "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
                "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            },
        ),
        ToolSet("etcd", {"etcd": "go.etcd.io/etcd/server/v3"}),
        ToolSet("helm", {"helm": "helm.sh/helm/v3/cmd/helm"}),
        ToolSet("minio", {"minio": "github.com/minio/minio"}),
        ToolSet(
            "prometheus",
            {
                "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
                "promtool": "github.com/prometheus/prometheus/cmd/promtool",
            },
            # Only static and file_sd targets: no cloud SDKs compiled in.
            tags=("remove_all_sd",),
        ),
    )
}
BINARY_TO_SET = {binary: ts for ts in TOOL_SETS.values() for binary in ts.commands}


def cache_root() -> Path:
    """Per-user cache: $GPUFLEET_CACHE, else $XDG_CACHE_HOME/gpufleet, else ~/.cache/gpufleet."""
    if env := os.environ.get("GPUFLEET_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpufleet"


def bin_dir(toolset: ToolSet) -> Path:
    return cache_root() / "bin" / f"{toolset.name}-{toolset.fingerprint()}"


def build(toolset: ToolSet, log=sys.stderr) -> Path:
    """Builds every command of ``toolset`` unless the cache has them; returns the bin dir."""
    target = bin_dir(toolset)
    if all((target / b).exists() for b in toolset.commands):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per tool set: parallel test runs share the cache.
    with open(target.parent / f".{toolset.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((target / b).exists() for b in toolset.commands):
            return target
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("`go` is not on PATH; it is needed once to build the local binaries")
        started = time.monotonic()
        print(f"building {', '.join(toolset.commands)} (first run only)...", file=log, flush=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{toolset.name}-", dir=target.parent))
        try:
            for binary, package in toolset.commands.items():
                subprocess.run(
                    [
                        *(go, "build", "-trimpath", "-ldflags=-s -w", f"-tags={','.join(toolset.tags)}"),
                        *("-o", str(staging / binary), package),
                    ],
                    cwd=toolset.module_dir,
                    env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"},
                    check=True,
                )
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"built {toolset.name} in {time.monotonic() - started:.0f}s -> {target}", file=log)
    return target


def ensure(binary: str) -> Path:
    """Path to ``binary`` (for example ``kube-apiserver``), building its tool set if needed."""
    toolset = BINARY_TO_SET.get(binary)
    if toolset is None:
        raise KeyError(f"unknown binary {binary!r}; known: {sorted(BINARY_TO_SET)}")
    return build(toolset) / binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("sets", nargs="*", help=f"tool sets: {', '.join(TOOL_SETS)} (default: all)")
    args = parser.parse_args(argv)
    if unknown := set(args.sets) - set(TOOL_SETS):
        parser.error(f"unknown tool sets {sorted(unknown)}; known: {', '.join(TOOL_SETS)}")
    for name in args.sets or TOOL_SETS:
        started = time.monotonic()
        path = build(TOOL_SETS[name])
        print(f"{name}: {path} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
