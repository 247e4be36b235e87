"""The gpufleet CRDs installed once per session on the test cluster, and helpers to use them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from gpufleet.api import crdgen
from gpufleet.api.testing import Objects
from gpufleet.localcluster.waiting import wait_for

FIELD_MANAGER = "gpufleet-tests"


def _established(crd: client.V1CustomResourceDefinition) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))


@pytest.fixture(scope="session")
def gpufleet_crds(cluster: Any) -> list[str]:
    """Server-side apply crds/*.yaml and wait until both are Established."""
    api = client.ApiextensionsV1Api(cluster.api_client())
    names = []
    for path in sorted(crdgen.CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        api.patch_custom_resource_definition(
            crd["metadata"]["name"],
            crd,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        names.append(crd["metadata"]["name"])
    for name in names:
        wait_for(
            lambda name=name: api.read_custom_resource_definition(name),
            _established,
            60,
            what=f"{name} Established",
        )
    return names


@pytest.fixture
def objects(cluster: Any, gpufleet_crds: list[str], namespace: str) -> Iterator[Objects]:
    yield Objects(client.CustomObjectsApi(cluster.api_client()), namespace)
