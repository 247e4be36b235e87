"""Child processes that always die with their owner: own process group, log file, hard stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

from .waiting import StopWaiting


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ManagedProcess:
    """A subprocess in its own session (so stopping it stops its children too)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_seconds: float = 10.0) -> int | None:
        """SIGTERM to the whole group, SIGKILL after the grace period; returns the exit code."""
        if self.alive():
            signal_group(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace_seconds)
        # Children that ignored SIGTERM (or outlived the leader) go too.
        signal_group(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcessExited(StopWaiting, RuntimeError):
    """A process that was being waited for exited."""


def pod_process_ids(pod_name: str, command_marker: str) -> list[int]:
    """Local processes of a pod whose command line contains ``command_marker`` (the local
    kubelet runs a pod's containers with POD_NAME=<pod> in their environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (
                command_marker.encode() in (proc / "cmdline").read_bytes()
                and f"POD_NAME={pod_name}\0".encode() in (proc / "environ").read_bytes()
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
