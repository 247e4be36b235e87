"""The chart's optional web dashboard as `helm template` renders it: off by default; on, a
restricted pod running `gpufleet dashboard -A` as a ServiceAccount that may only read pools
and jobs, and a Service that selects it and not the operator."""

from __future__ import annotations

from typing import Any

import pytest

from gpufleet import rbac

from .conftest import RELEASE_NAMESPACE

ON = {"dashboard.enabled": True}
NAME = "gf-gpufleet-dashboard"


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_the_dashboard_is_off_by_default(render):
    docs = render()
    assert not [d for d in docs if "dashboard" in d["metadata"]["name"]]


def test_the_dashboard_pod_runs_restricted_with_its_flags(render):
    docs = render(
        {
            **ON,
            "dashboard.allowedHosts": ["fleet.example.com"],
            "dashboard.s3CredentialsSecret": "dashboard-s3",
            "artifacts.s3.endpoint": "https://s3.example.com",
        }
    )
    pod = named(docs, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    [container] = pod["containers"]
    assert container["command"] == ["gpufleet", "dashboard"]
    assert container["args"] == [
        "--all-namespaces",
        "--address=$(POD_IP)",
        "--port=8765",
        "--allowed-host=localhost:8765",  # kubectl port-forward on the same port
        "--allowed-host=127.0.0.1:8765",
        "--allowed-host=fleet.example.com",
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Probed over TCP: the server answers only the Host names it was told.
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://s3.example.com"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "dashboard-s3", "key": key}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    bare = named(render(ON), "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
    assert [e["name"] for e in bare["env"]] == ["POD_IP"]  # no S3 settings: no previews


def test_the_dashboard_may_only_read_pools_and_jobs(render):
    docs = render(ON)
    binding = named(docs, "ClusterRoleBinding", NAME)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": RELEASE_NAMESPACE}]
    role = named(docs, "ClusterRole", binding["roleRef"]["name"])
    assert [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]] == [
        (r.api_groups, r.resources, r.verbs) for r in rbac.USER_VIEW_RULES
    ]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in role["rules"])
    assert not [
        d for d in docs if d["kind"] in ("Role", "RoleBinding") and "dashboard" in d["metadata"]["name"]
    ]


def test_the_dashboard_service_selects_the_dashboard_only(render):
    docs = render(ON)
    service = named(docs, "Service", NAME)
    pod_labels = named(docs, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    operator = named(docs, "Deployment", "gf-gpufleet")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= operator.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8765, "targetPort": "http", "protocol": "TCP"}
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dashboard.port": 0}, "/dashboard/port"),
        ({"dashboard.allowedHosts": ["a b"]}, "/dashboard/allowedHosts/0"),
        ({"dashboard.s3CredentialsSecret": "Not_A_Name"}, "/dashboard/s3CredentialsSecret"),
        ({"dashboard.login": True}, "additional properties 'login' not allowed"),
    ],
)
def test_bad_dashboard_values_are_refused_by_name(helm_template, values, message):
    result = helm_template({**ON, **values})
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
