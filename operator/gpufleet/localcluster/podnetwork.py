"""Pod addresses of a local cluster: a loopback /16 of its own, and the addresses in it.

Every pod of a local cluster gets its own loopback address, so many workers listen on the
same port. Two clusters on one machine (parallel test runs, a developer's fleet beside the
tests) must never hand out the same address, or one cluster's probes and operator reach
the other's workers. So each kubelet stand-in claims one ``127.N.0.0/16`` (N from 1 to
254) for as long as it runs, by holding an exclusive ``flock`` on that network's file in a
registry folder shared by the machine. The kernel drops the lock when the process exits,
however it exits, so a killed cluster never keeps its network.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

REGISTRY_DIR = Path(tempfile.gettempdir()) / "gpufleet-pod-networks"
# 127.0.0.0/16 is left to the host: the control plane and hostNetwork pods use 127.0.0.1.
SECOND_OCTETS = range(1, 255)


class NoPodNetworkLeft(RuntimeError):
    pass


@dataclass
class PodNetworkClaim:
    """A network this process holds until ``release`` or its exit."""

    network: ipaddress.IPv4Network
    lock_fd: int

    def release(self) -> None:
        os.close(self.lock_fd)


def claim(registry: Path = REGISTRY_DIR) -> PodNetworkClaim:
    """The first loopback /16 that no other running local cluster holds."""
    registry.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # one registry for every user of the machine
        registry.chmod(0o1777)
    for octet in SECOND_OCTETS:
        network = ipaddress.IPv4Network(f"127.{octet}.0.0/16")
        fd = os.open(registry / f"127.{octet}.0.0-16.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return PodNetworkClaim(network, fd)
    raise NoPodNetworkLeft(f"every loopback /16 is held by another local cluster (registry {registry})")


class IPPool:
    """Pod addresses from one network, reused after a pod is gone."""

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self.network = network
        self._lock = threading.Lock()
        self._next = int(network.network_address) + 1
        self._end = int(network.broadcast_address)
        self._free: list[int] = []

    def allocate(self) -> str:
        with self._lock:
            if self._free:
                return str(ipaddress.IPv4Address(self._free.pop()))
            while (self._next & 0xFF) in (0, 255):  # skip network/broadcast-looking addresses
                self._next += 1
            if self._next >= self._end:
                raise NoPodNetworkLeft(f"every address of {self.network} is in use")
            self._next += 1
            return str(ipaddress.IPv4Address(self._next - 1))

    def release(self, address: str) -> None:
        with self._lock:
            self._free.append(int(ipaddress.IPv4Address(address)))
