"""The chaos scenario's one-writer check, from what the API proxies recorded."""

from __future__ import annotations

from bench.chaos.apiproxy import Write
from bench.chaos.scenario import lease_write, overlaps

LEASES = "/apis/coordination.k8s.io/v1/namespaces/gpufleet-system/leases"
SECRETS = "/api/v1/namespaces/chaos/secrets"
STATUS = "/apis/gpufleet.io/v1alpha1/namespaces/chaos/generationjobs/j1/status"


def write(replica: str, at: float, path: str, status: int = 200, method: str = "POST") -> Write:
    return Write(replica, at, method, path, status, injected=False)


def acting(writes: list[Write]) -> list[Write]:
    return [w for w in writes if not lease_write(w.path)]


def test_lease_writes_are_not_acts_of_a_leader() -> None:
    assert lease_write(LEASES)  # creating the Lease: the collection's path
    assert lease_write(f"{LEASES}/gpufleet-operator")  # renewing or releasing it
    assert not lease_write(SECRETS)


def test_two_replicas_racing_to_create_the_lease_at_start_is_no_overlap() -> None:
    # Both start at once: b creates the Lease, a's create is refused, b acts; later a leads.
    writes = [
        write("b-1", 1.0, LEASES, 201),
        write("a-1", 1.1, LEASES, 409),
        write("b-1", 1.9, SECRETS, 201),
        write("b-1", 2.0, STATUS, method="PATCH"),
        write("a-1", 30.0, SECRETS, 409),  # a took over after b was gone
    ]
    assert overlaps(acting(writes)) == ([], [])
    assert overlaps(writes) != ([], [])  # counting the Lease creates would call both overlaps


def test_a_deposed_replica_writing_after_its_successor_is_found() -> None:
    led = [write("a-1", 1.0, STATUS, method="PATCH"), write("b-1", 15.0, STATUS, method="PATCH")]
    applied, refused = overlaps([*led, write("a-1", 15.5, STATUS, method="PATCH")])
    assert len(applied) == 1 and applied[0].startswith("a-1 wrote PATCH") and refused == []
    applied, refused = overlaps([*led, write("a-1", 15.5, SECRETS, 409)])
    assert applied == [] and len(refused) == 1 and refused[0].startswith("a-1 wrote POST")
