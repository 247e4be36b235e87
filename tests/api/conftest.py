"""The gpufleet CRDs installed once per session on the test cluster, and helpers to use them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from gpufleet.api.testing import Objects


@pytest.fixture
def objects(cluster: Any, gpufleet_crds: list[str], namespace: str) -> Iterator[Objects]:
    yield Objects(client.CustomObjectsApi(cluster.api_client()), namespace)
