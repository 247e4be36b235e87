"""Pod networks of local clusters: one claim per network, released when its holder exits."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.localcluster.podnetwork import IPPool, NoPodNetworkLeft, claim

HOLDER = (
    "import sys; from pathlib import Path; from gpufleet.localcluster.podnetwork import claim; "
    "print(claim(Path(sys.argv[1])).network, flush=True); sys.stdin.read()"
)


def test_claims_held_at_once_get_different_networks(tmp_path: Path) -> None:
    first, second = claim(tmp_path), claim(tmp_path)
    assert (str(first.network), str(second.network)) == ("127.1.0.0/16", "127.2.0.0/16")
    first.release()
    assert str(claim(tmp_path).network) == "127.1.0.0/16"


def test_a_network_held_by_another_process_is_free_once_that_process_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "127.1.0.0/16"  # it holds the claim now
        mine = claim(tmp_path)
        assert str(mine.network) == "127.2.0.0/16"
    finally:
        holder.kill()
        holder.wait()
    assert str(claim(tmp_path).network) == "127.1.0.0/16"  # no clean-up ran, yet it is free


def test_addresses_come_from_the_network_skip_x0_and_x255_and_are_reused() -> None:
    pool = IPPool(ipaddress.IPv4Network("127.7.0.0/16"))
    addresses = [pool.allocate() for _ in range(300)]
    assert len(set(addresses)) == 300
    assert all(ipaddress.ip_address(a) in pool.network for a in addresses)
    assert not any(a.endswith((".0", ".255")) for a in addresses)
    pool.release(addresses[5])
    assert pool.allocate() == addresses[5]


def test_a_full_network_says_so() -> None:
    pool = IPPool(ipaddress.IPv4Network("127.9.0.0/30"))  # .1 and .2 only
    assert [pool.allocate(), pool.allocate()] == ["127.9.0.1", "127.9.0.2"]
    with pytest.raises(NoPodNetworkLeft, match=r"every address of 127\.9\.0\.0/30 is in use"):
        pool.allocate()
