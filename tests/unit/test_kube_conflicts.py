"""Status writes that meet a 409 Conflict are tried again (they name no resourceVersion)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from gpufleet.controller import kube as kube_module
from gpufleet.controller.kube import CONFLICT_TRIES, Kube


class StatusApi:
    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.calls = 0

    def patch_namespaced_custom_object_status(self, *args: Any) -> dict:
        self.calls += 1
        if self.calls <= self.conflicts:
            raise ApiException(status=409, reason="Conflict")
        return {"status": args[-1]["status"]}


def patch(conflicts: int, monkeypatch: pytest.MonkeyPatch) -> tuple[StatusApi, Any]:
    monkeypatch.setattr(kube_module, "CONFLICT_BACKOFF_SECONDS", 0.0)
    kube = Kube(client.ApiClient())
    api = StatusApi(conflicts)
    kube.custom = api  # type: ignore[assignment]
    return api, asyncio.run(kube.patch_status("generationjobs", "ns", "a", {"phase": "Running"}))


def test_a_conflict_is_tried_again_until_the_write_lands(monkeypatch):
    api, stored = patch(CONFLICT_TRIES - 1, monkeypatch)
    assert stored == {"status": {"phase": "Running"}}
    assert api.calls == CONFLICT_TRIES


def test_conflicts_past_the_limit_reach_the_caller(monkeypatch):
    with pytest.raises(ApiException) as raised:
        patch(CONFLICT_TRIES, monkeypatch)
    assert raised.value.status == 409
