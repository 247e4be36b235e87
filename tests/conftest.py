"""Shared fixtures: one real control plane per test session, a namespace per test.

Tests that use ``cluster`` or ``namespace`` must be marked ``@pytest.mark.cluster``, and
``localkubelet`` too when they rely on the local kubelet stand-in (pods as processes here);
``pytest -m "not cluster and not s3"`` runs the pure unit tests alone, in seconds.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gpufleet.core import placement
from gpufleet.localcluster import simnodes
from gpufleet.localcluster.cluster import ExistingCluster, LocalCluster
from gpufleet.localcluster.fleet import OperatorProcess, apply_crds, install_operator_identity
from gpufleet.localcluster.s3server import S3Server
from gpufleet.localcluster.waiting import wait_for

# The default mixed GPU fleet plus process-less nodes for scale tests (tainted: only pods
# that tolerate the taint land there, so ordinary tests always get real processes).
TEST_FLEET = (*simnodes.DEFAULT_FLEET, *simnodes.simulated_only_nodes(4))


@pytest.fixture(scope="session", autouse=True)
def compiled_placer() -> None:
    """Compile the placer's loops (or load them from numba's cache) before any test starts an
    operator: the first compile takes ~10 s, which no test's own timeouts should absorb."""
    placement.warm_up()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The local cluster, or with GPUFLEET_TEST_KUBECONFIG set, an existing one (kind)."""
    if external := os.environ.get("GPUFLEET_TEST_KUBECONFIG"):
        yield ExistingCluster(Path(external))
        return
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), TEST_FLEET).start()
    print(
        f"\nlocal cluster up in {local.startup_seconds:.1f}s "
        f"(control plane {local.control_plane.startup_seconds:.1f}s) at {local.server}"
    )
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client())


@pytest.fixture
def namespace(cluster: LocalCluster, core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods can be admitted)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        bool,
        30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def gpufleet_crds(cluster: LocalCluster | ExistingCluster) -> list[str]:
    """The gpufleet CRDs, server-side applied once per session and Established."""
    return apply_crds(cluster.api_client())


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One MinIO for the session, on a free loopback port with a temporary data folder."""
    server = S3Server().start()
    print(f"\nS3 server up in {server.startup_seconds:.1f}s at {server.endpoint}")
    try:
        yield server
    finally:
        server.stop()


BUCKET = "gpufleet-artifacts"
S3_SECRET = "gpufleet-s3"


@pytest.fixture(scope="session")
def operator(
    cluster: Any, gpufleet_crds: list[str], s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_operator_identity(cluster.api_client())
    s3_server.create_bucket(BUCKET)
    process = OperatorProcess(
        cluster.api_client(),
        cluster.server,
        cluster.control_plane.ca_cert,
        tmp_path_factory.mktemp("operator"),
        s3_server.endpoint,
        S3_SECRET,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def fleet_namespace(
    namespace: str, core: client.CoreV1Api, s3_server: S3Server, operator: OperatorProcess
) -> str:
    """A namespace with the S3 credentials Secret workers need, and a running operator."""
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=S3_SECRET),
            string_data={
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            },
        ),
    )
    if not operator.alive():
        operator.start()
    return namespace
