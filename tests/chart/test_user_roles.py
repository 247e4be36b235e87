"""The chart's user roles on the real control plane: people bound to the built-in ``edit``
role may submit and cancel GenerationJobs, people bound to ``view`` may only read them.

Only the chart's aggregated ClusterRoles are applied (no operator needed); the real
kube-controller-manager aggregates them into the built-in roles, and ``kubectl auth can-i``
asks the real authorizer (with the CRDs installed: kubectl resolves the resource names).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from gpufleet.localcluster.waiting import wait_for

pytestmark = [pytest.mark.cluster]

RESOURCE_JOBS = "generationjobs.gpufleet.io"
RESOURCE_POOLS = "workerpools.gpufleet.io"


def can_i(cluster: Any, user: str, verb: str, resource: str, namespace: str) -> bool:
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    result = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, "-n", namespace, "--as", user, check=False
    )
    return result.stdout.strip() == "yes"


def bind(rbac: client.RbacAuthorizationV1Api, namespace: str, user: str, cluster_role: str) -> None:
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"{user}-{cluster_role}"),
            subjects=[client.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")],
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_role
            ),
        ),
    )


def test_built_in_edit_may_submit_jobs_and_view_may_only_read_them(
    cluster: Any, namespace: str, gpufleet_crds: list[str], render: Callable[..., list[dict[str, Any]]]
) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api_client())
    user_roles = [
        d
        for d in render({"fullnameOverride": f"roles-{namespace}"})
        if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-view", "-edit"))
    ]
    assert len(user_roles) == 2
    bind(rbac, namespace, "alice", "edit")
    bind(rbac, namespace, "bob", "view")
    bind(rbac, namespace, "carol", "admin")
    for role in user_roles:
        rbac.create_cluster_role(role)
    try:
        for user in ("alice", "carol"):
            for verb, resource in [
                ("create", RESOURCE_JOBS),
                ("patch", RESOURCE_JOBS),  # gpufleet cancel
                ("delete", RESOURCE_JOBS),
                ("watch", RESOURCE_JOBS),
                ("create", RESOURCE_POOLS),
                ("update", f"{RESOURCE_POOLS}/scale"),
            ]:
                wait_for(
                    lambda u=user, v=verb, r=resource: can_i(cluster, u, v, r, namespace),
                    bool,
                    60,
                    what=f"{user} ({'edit' if user == 'alice' else 'admin'}) may {verb} {resource}",
                )
        for verb in ("get", "list", "watch"):
            for resource in (RESOURCE_JOBS, RESOURCE_POOLS):
                wait_for(
                    lambda v=verb, r=resource: can_i(cluster, "bob", v, r, namespace),
                    bool,
                    60,
                    what=f"bob (view) may {verb} {resource}",
                )
        for verb in ("create", "patch", "delete"):
            assert not can_i(cluster, "bob", verb, RESOURCE_JOBS, namespace), f"view may {verb} jobs"
        # Only in the namespace of the binding.
        assert not can_i(cluster, "alice", "create", RESOURCE_JOBS, "default")
    finally:
        for role in user_roles:
            rbac.delete_cluster_role(role["metadata"]["name"])
    # The grants came from the aggregated roles: without them, edit may not submit jobs.
    wait_for(
        lambda: not can_i(cluster, "alice", "create", RESOURCE_JOBS, namespace),
        bool,
        60,
        what="edit losing the gpufleet rules once the chart's roles are gone",
    )
