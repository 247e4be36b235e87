"""The operator's API writes: how refusals of the API server reach the rounds."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes.client.rest import ApiException

from gpufleet.controller.kube import Kube, NamespaceTerminating


class RefusingCore:
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message

    def create_namespaced_secret(self, namespace: str, manifest: dict) -> None:
        error = ApiException(status=self.status, reason="refused")
        error.body = json.dumps({"kind": "Status", "message": self.message})
        raise error


def kube_with(core: RefusingCore) -> Kube:
    kube = Kube.__new__(Kube)
    kube.core = core  # type: ignore[assignment]
    return kube


def test_a_secret_refused_in_a_terminating_namespace_says_so() -> None:
    message = (
        'secrets "sd-worker-token" is forbidden: unable to create new content in namespace studio '
        "because it is being terminated"
    )
    with pytest.raises(NamespaceTerminating, match="studio"):
        asyncio.run(kube_with(RefusingCore(403, message)).create_secret("studio", {}))


def test_other_refusals_stay_errors() -> None:
    with pytest.raises(ApiException):
        asyncio.run(kube_with(RefusingCore(403, "forbidden by RBAC")).create_secret("studio", {}))
    asyncio.run(kube_with(RefusingCore(409, "already exists")).create_secret("studio", {}))
