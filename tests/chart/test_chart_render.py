"""The chart as `helm lint` and `helm template` see it: default and namespaced setups,
values refused by the schema, RBAC kept to least privilege, and the operator's pod spec."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from gpufleet import rbac

from .conftest import CHART, RELEASE_NAMESPACE, helm_set_args, load_hack_module

sync_chart = load_hack_module("sync_chart")

NAMESPACED = {"watchNamespaces": ["studio", "batch"]}
RBAC_KINDS = ("ClusterRole", "Role")
# The users' ClusterRoles of release "gf": name -> (built-in role it joins, its rules).
USER_ROLES = {
    "gf-gpufleet-view": ("view", rbac.USER_VIEW_RULES),
    "gf-gpufleet-edit": ("edit", rbac.USER_EDIT_RULES),
}


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = find(docs, kind, name)
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["default", "namespaced"])
def test_helm_lint_passes(helm, values):
    result = subprocess.run(
        [str(helm), "lint", str(CHART), "--strict", *helm_set_args(values)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_lint_fails_on_a_bad_value(helm):
    result = subprocess.run(
        [str(helm), "lint", str(CHART), "--set", "replicas=two"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "/replicas" in result.stdout + result.stderr


# --- values refused with a message naming them -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicas": "two"}, "'/replicas': got string, want integer"),
        ({"crds": {"install": "yes"}}, "'/crds/install': got string, want boolean"),
        ({"watchNamespaces": "studio"}, "'/watchNamespaces': got string, want array"),
        ({"metricsPort": 80}, "/metricsPort"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"watchNamespaces": ["Studio_1"]}, "/watchNamespaces/0"),
        ({"prometheusRule": {"jobFailureRatio": 2}}, "/prometheusRule/jobFailureRatio"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ],
)
def test_a_value_of_the_wrong_type_or_form_is_refused_by_name(helm_template, values, named):
    result = helm_template(values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr


@pytest.mark.parametrize(
    ("values", "path", "key"),
    [
        ({"replica": 2}, "''", "'replica'"),
        ({"image": {"tga": "1.0"}}, "'/image'", "'tga'"),
        ({"networkPolicy": {"workerNamespace": ["a"]}}, "'/networkPolicy'", "'workerNamespace'"),
        ({"artifacts": {"s3": {"bucket": "x"}}}, "'/artifacts/s3'", "'bucket'"),
    ],
)
def test_an_unknown_key_is_refused_by_name(helm_template, values, path, key):
    result = helm_template(values)
    assert result.returncode != 0
    assert f"at {path}: additional properties {key} not allowed" in result.stderr


def test_service_monitor_without_the_metrics_service_is_refused(helm_template):
    result = helm_template({"serviceMonitor": {"enabled": True}, "metricsService": {"enabled": False}})
    assert result.returncode != 0
    assert "serviceMonitor.enabled needs metricsService.enabled" in result.stderr


def test_an_existing_service_account_must_be_named(helm_template):
    result = helm_template({"serviceAccount": {"create": False}})
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr


# --- what the default and namespaced setups contain ---------------------------------------------


def test_default_setup_is_cluster_wide(render):
    docs = render()
    container = operator_container(docs)
    assert "--all-namespaces" in container["args"]
    assert not any(a.startswith("--namespace=") for a in container["args"])
    roles = {d["metadata"]["name"] for d in find(docs, "ClusterRole")}
    assert roles == {"gf-gpufleet", "gf-gpufleet-cluster", *USER_ROLES}
    binding = only(docs, "ClusterRoleBinding", "gf-gpufleet")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gf-gpufleet", "namespace": RELEASE_NAMESPACE}
    ]
    # The only Role is the Lease's, in the release namespace.
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in find(docs, "Role")] == [
        ("gf-gpufleet-own-namespace", RELEASE_NAMESPACE)
    ]


def test_namespaced_setup_has_a_role_per_namespace_and_only_reads_cluster_wide(render):
    docs = render(NAMESPACED)
    container = operator_container(docs)
    assert "--all-namespaces" not in container["args"]
    assert [a for a in container["args"] if a.startswith("--namespace=")] == [
        "--namespace=studio",
        "--namespace=batch",
    ]
    cluster_roles = [r for r in find(docs, "ClusterRole") if r["metadata"]["name"] not in USER_ROLES]
    assert [r["metadata"]["name"] for r in cluster_roles] == ["gf-gpufleet-cluster"]
    assert cluster_roles[0]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    rules = sync_chart.yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    expected = [{k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in rules["namespaced"]]
    for namespace in ("studio", "batch"):
        role = only([d for d in find(docs, "Role") if d["metadata"]["namespace"] == namespace], "Role")
        assert role["rules"] == expected
        binding = [d for d in find(docs, "RoleBinding") if d["metadata"]["namespace"] == namespace]
        assert binding[0]["roleRef"]["name"] == role["metadata"]["name"]
    assert {d["metadata"]["name"] for d in find(docs, "ClusterRoleBinding")} == {"gf-gpufleet-cluster"}


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["default", "namespaced"])
def test_users_roles_join_the_built_in_roles_with_the_rules_of_gpufleet_rbac(render, values):
    docs = {d["metadata"]["name"]: d for d in find(render(values), "ClusterRole")}
    for name, (user_role, rules) in USER_ROLES.items():
        role = docs[name]
        assert role["metadata"]["labels"].items() >= rbac.aggregate_labels(user_role).items()
        assert role["rules"] == [r.manifest() for r in rules]
        assert not role.get("aggregationRule")
    # edit's rules must not reach view: a viewer may not create a job.
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in docs["gf-gpufleet-edit"]["metadata"]["labels"]


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["default", "namespaced"])
def test_rendered_rbac_keeps_least_privilege(render, values):
    for doc in render(values):
        if doc["kind"] in RBAC_KINDS:
            assert sync_chart.least_privilege_violations(doc["rules"]) == [], doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}, "wildcards"),
        ({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}, "wildcards"),
        ({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}, "wildcards"),
        (
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]},
            "escalate",
        ),
        ({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["bind"]}, "bind"),
        ({"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"]}, "impersonate"),
        ({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}, "pods/exec"),
        (
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            "serviceaccounts/token",
        ),
        (
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get"]},
            "Secrets may only be created",
        ),
        ({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}, "Secrets may only be created"),
    ],
)
def test_least_privilege_check_catches_each_forbidden_grant(rule, problem):
    problems = sync_chart.least_privilege_violations([rule])
    assert len(problems) == 1 and problem in problems[0]


def test_every_rendered_rule_carries_its_reason_as_a_comment(helm_template):
    rules = sync_chart.yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    rendered = helm_template(NAMESPACED).stdout
    for group in rules.values():
        for rule in group:
            assert f"  # {rule['reason']}\n  - apiGroups: " in rendered, rule["reason"]


def test_crds_are_kept_on_uninstall_and_can_be_left_out(render):
    crds = find(render(), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == {"workerpools.gpufleet.io", "generationjobs.gpufleet.io"}
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert find(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


# --- the operator's pod ---------------------------------------------------------------------------


def test_operator_pod_runs_restricted(render):
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["serviceAccountName"] == "gf-gpufleet"
    assert not any(v.get("hostPath") for v in pod["volumes"])


def test_operator_command_flags_probes_and_key(render):
    docs = render(
        {"artifacts": {"s3": {"endpoint": "http://minio.storage:9000", "credentialsSecret": "s3-creds"}}}
    )
    container = operator_container(docs)
    assert container["command"] == ["gpufleet", "operator"]
    assert container["args"] == [
        "--all-namespaces",
        f"--leader-election-namespace={RELEASE_NAMESPACE}",
        "--metrics-port=8080",
        "--health-port=8081",
        "--token-key-file=/var/run/gpufleet/operator-key/key",
        "--bind-address=$(POD_IP)",
        "--worker-s3-endpoint=http://minio.storage:9000",
        "--worker-s3-secret=s3-creds",
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Liveness waits for startup, which may compile the placer first (three minutes allowed).
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "health"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/run/gpufleet/operator-key")
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = only(docs, "Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "key", "path": "key"}]
    assert len(secret["data"]["key"]) >= 64


def test_s3_flags_are_left_out_when_unset(render):
    args = operator_container(render())["args"]
    assert not any(a.startswith("--worker-s3") for a in args)


def test_an_existing_token_key_secret_replaces_the_generated_one(render):
    docs = render({"tokenKey": {"existingSecret": "my-key"}})
    assert find(docs, "Secret") == []
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "token-key")["secret"]["secretName"] == "my-key"


@pytest.mark.parametrize(
    ("replicas", "strategy", "pdb"),
    [
        (1, {"type": "Recreate"}, False),
        (3, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}, True),
    ],
)
def test_one_replica_recreates_several_elect_a_leader(render, replicas, strategy, pdb):
    docs = render({"replicas": replicas})
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    assert deployment["spec"]["strategy"] == strategy
    assert f"--leader-election-namespace={RELEASE_NAMESPACE}" in operator_container(docs)["args"]
    budgets = find(docs, "PodDisruptionBudget")
    assert bool(budgets) == pdb
    if pdb:
        assert budgets[0]["spec"]["maxUnavailable"] == 1
        assert budgets[0]["spec"]["selector"] == deployment["spec"]["selector"]


# --- network, metrics, alerts -------------------------------------------------------------------


def test_network_policies_let_only_the_operator_reach_workers_and_keep_dns(render):
    docs = render(NAMESPACED)
    operator = only(docs, "NetworkPolicy", "gf-gpufleet-operator")
    assert operator["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress_ports = [(p["port"], p["protocol"]) for rule in operator["spec"]["egress"] for p in rule["ports"]]
    assert (53, "UDP") in egress_ports and (53, "TCP") in egress_ports
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    workers = find(docs, "NetworkPolicy", "gf-gpufleet-workers")
    assert sorted(w["metadata"]["namespace"] for w in workers) == ["batch", "studio"]
    for policy in workers:
        assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "gpufleet-worker"}}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        [rule] = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
        assert rule["from"] == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}},
                "podSelector": {"matchLabels": selector},
            }
        ]


def test_worker_network_policy_namespaces_can_be_listed_in_cluster_wide_mode(render):
    assert find(render(), "NetworkPolicy", "gf-gpufleet-workers") == []
    docs = render({"networkPolicy": {"workerNamespaces": ["gpu-team"]}})
    assert [p["metadata"]["namespace"] for p in find(docs, "NetworkPolicy", "gf-gpufleet-workers")] == [
        "gpu-team"
    ]
    assert find(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_metrics_service_selects_the_operator(render):
    docs = render()
    service = only(docs, "Service", "gf-gpufleet-metrics")
    assert service["spec"]["selector"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_service_monitor_and_alerts_are_optional(render):
    docs = render()
    assert find(docs, "ServiceMonitor") == [] and find(docs, "PrometheusRule") == []
    docs = render(
        {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "queueStallMinutes": 7, "jobFailureRatio": 0.5},
        }
    )
    monitor = only(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The metrics' namespace label is the pool's: without honorLabels it became exported_namespace.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    rules = {r["alert"]: r for r in only(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert set(rules) == {
        "GpufleetQueueNotDraining",
        "GpufleetWorkersNotReady",
        "GpufleetJobsFailing",
        "GpufleetOperatorErrors",
        "GpufleetOperatorDown",
        "GpufleetQueueWaitHigh",
        "GpufleetNoLeader",
    }
    assert "gpufleet_queue_depth[7m]" in rules["GpufleetQueueNotDraining"]["expr"]
    assert "gpufleet_jobs_finished_total[7m]" in rules["GpufleetQueueNotDraining"]["expr"]
    assert (
        "gpufleet_pool_ready_workers < on (namespace, pool) gpufleet_pool_desired_workers"
        in (rules["GpufleetWorkersNotReady"]["expr"])
    )
    assert 'outcome="failed"' in rules["GpufleetJobsFailing"]["expr"]
    assert rules["GpufleetJobsFailing"]["expr"].rstrip().endswith("> 0.5")
    # Prometheus' own template syntax reaches the rule untouched by Helm.
    assert "{{ $labels.pool }}" in rules["GpufleetQueueNotDraining"]["annotations"]["summary"]


def test_service_monitor_passes_relabelings_through(render):
    relabel = [
        {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
    ]
    drop = [{"action": "drop", "sourceLabels": ["__name__"], "regex": "gpufleet_job_transitions_total"}]
    values = {
        "serviceMonitor": {
            "enabled": True,
            "honorLabels": False,
            "relabelings": relabel,
            "metricRelabelings": drop,
        }
    }
    (endpoint,) = only(render(values), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is False
    assert endpoint["relabelings"] == relabel and endpoint["metricRelabelings"] == drop


def test_grafana_dashboard_is_an_optional_configmap_for_the_sidecar(render):
    assert [d for d in render() if d["kind"] == "ConfigMap"] == []
    docs = render({"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "GPU"}}})
    dashboard = only(docs, "ConfigMap", "gf-gpufleet-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "gpufleet-system"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "GPU"}
    source = (CHART / "files" / "grafana-dashboard.json").read_text()
    assert json.loads(dashboard["data"]["gpufleet.json"]) == json.loads(source)
    moved = render(
        {"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "labels": {"dash": "yes"}}}
    )
    dashboard = only(moved, "ConfigMap", "gf-gpufleet-dashboard")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["dash"] == "yes"
