"""A real Prometheus scrapes the operator (leader and a standby) on the local control plane
the way the chart's ServiceMonitor tells the Prometheus Operator to; every query of the Grafana
dashboard and of the KEDA / HPA examples answers for a running pool."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpufleet.localcluster import binaries
from gpufleet.localcluster.fleet import OPERATOR_NAMESPACE, OperatorProcess
from gpufleet.localcluster.prometheus import PrometheusServer, service_monitor_scrape
from gpufleet.localcluster.waiting import wait_for
from tests.conftest import S3_SECRET

from .conftest import Fleet

pytestmark = [pytest.mark.cluster, pytest.mark.localkubelet, pytest.mark.s3]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "gpufleet"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
EXAMPLES = REPO_ROOT / "examples" / "autoscaling"
RELEASE, SERVICE = "gf", "gf-gpufleet-metrics"
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval stands for here (1 s scrapes)
UNHONOURED = "without-honor-labels"


def service_monitor_endpoint() -> dict[str, Any]:
    rendered = subprocess.run(
        [
            *(str(binaries.ensure("helm")), "template", RELEASE, str(CHART)),
            *("--namespace", OPERATOR_NAMESPACE, "--set", "serviceMonitor.enabled=true"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (monitor,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    return endpoint


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every panel target in the shipped dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_variables() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {v["name"]: v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"}


def substitute(expr: str, namespace: str, pool: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$namespace", namespace)
        .replace("$pool", pool)
    )


@pytest.fixture
def standby(
    cluster: Any, operator: OperatorProcess, s3_server: Any, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """A second operator replica: it waits on the Lease the session's operator holds."""
    process = OperatorProcess(
        cluster.api_client(),
        cluster.server,
        cluster.control_plane.ca_cert,
        tmp_path / "standby",
        s3_server.endpoint,
        S3_SECRET,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def prometheus(
    operator: OperatorProcess, standby: OperatorProcess, tmp_path: Path
) -> Iterator[PrometheusServer]:
    endpoint = service_monitor_endpoint()
    # The labels the Prometheus Operator's Kubernetes discovery gives each endpoint of the Service.
    targets = [
        (
            f"127.0.0.1:{process.metrics_port}",
            {
                "job": SERVICE,
                "namespace": OPERATOR_NAMESPACE,
                "service": SERVICE,
                "endpoint": "metrics",
                "container": "operator",
                "pod": f"gf-gpufleet-{role}",
            },
        )
        for role, process in (("leader", operator), ("standby", standby))
    ]
    leader_only = [(address, {**labels, "job": UNHONOURED}) for address, labels in targets[:1]]
    server = PrometheusServer(
        [
            service_monitor_scrape(SERVICE, endpoint, targets, "1s"),
            # The same scrape as the chart's ServiceMonitor had it before honorLabels.
            service_monitor_scrape(UNHONOURED, {**endpoint, "honorLabels": False}, leader_only, "1s"),
        ],
        tmp_path / "prometheus",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_leader_and_standby_and_every_dashboard_and_scaler_query_answers(
    fleet: Fleet, prometheus: PrometheusServer, standby: OperatorProcess
) -> None:
    namespace, pool = fleet.namespace, "sd"
    assert service_monitor_endpoint()["honorLabels"] is True
    # Both replicas answer scrapes; only one leads.
    wait_for(
        lambda: prometheus.query(f'up{{job="{SERVICE}"}} == 1'),
        lambda up: len(up) == 2,
        60,
        what="both operator replicas scraped",
        describe=lambda up: str([(t["labels"], t["health"], t["lastError"]) for t in prometheus.targets()]),
    )
    wait_for(
        lambda: {
            s["metric"]["pod"]: float(s["value"][1])
            for s in prometheus.query(f'gpufleet_leader{{job="{SERVICE}"}}')
        },
        lambda leaders: leaders == {"gf-gpufleet-leader": 1.0, "gf-gpufleet-standby": 0.0},
        60,
        what="the session's operator leads and the second replica stands by",
    )
    assert standby.alive()
    [build] = prometheus.query(f'gpufleet_build_info{{job="{SERVICE}", pod="gf-gpufleet-leader"}}')
    assert build["metric"]["version"]

    fleet.pool(pool)
    ready = f'gpufleet_pool_ready_workers{{namespace="{namespace}", pool="{pool}"}}'
    wait_for(
        lambda: prometheus.values(ready), lambda v: v == [1.0], 120, what=f"Prometheus sees {pool} ready"
    )
    for index in range(3):
        fleet.job(f"job-{index}", pool=pool)
    for index in range(3):
        fleet.wait_phase(f"job-{index}", "Succeeded")
    finished = (
        f'sum(gpufleet_jobs_finished_total{{namespace="{namespace}", pool="{pool}", outcome="succeeded"}})'
    )
    wait_for(lambda: prometheus.values(finished), lambda v: v == [3.0], 30, what="Prometheus sees 3 jobs end")

    # The finding: without honorLabels the pool's namespace label became exported_namespace,
    # so the documented KEDA query matched nothing.
    assert prometheus.query(f'gpufleet_queue_depth{{job="{UNHONOURED}", namespace="{namespace}"}}') == []
    assert prometheus.query(f'gpufleet_queue_depth{{job="{UNHONOURED}", exported_namespace="{namespace}"}}')

    # Every panel of the dashboard has series for the pool, and a number to draw.
    for name, query in dashboard_variables().items():
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, f"variable {name}: {query}"
        selector, label = substitute(match[1], namespace, pool), match[2]
        assert {"namespace": namespace, "pool": pool}[label] in prometheus.label_values(label, selector)
    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        query = substitute(expr, namespace, pool)
        assert prometheus.finite_values(query), f"panel {title!r}: {query} -> {prometheus.query(query)}"
    wait_quantile = prometheus.finite_values(
        substitute(dict(queries)["Queue wait (creation to first dispatch)"], namespace, pool)
    )
    assert all(v > 0 for v in wait_quantile)

    # The scalers' queries, pointed at this pool.
    (keda,) = yaml.safe_load_all((EXAMPLES / "keda-scaledobject.yaml").read_text())
    (trigger,) = keda["spec"]["triggers"]
    keda_query = (
        trigger["metadata"]["query"]
        .replace('"studio"', f'"{namespace}"')
        .replace('"sd15-external"', f'"{pool}"')
    )
    assert prometheus.values(keda_query) == [0.0]
    hpa, adapter = yaml.safe_load_all((EXAMPLES / "hpa-external-metric.yaml").read_text())
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    assert {s["pool"] for s in prometheus.series(rule["seriesQuery"]) if s["namespace"] == namespace} == {
        pool
    }
    metrics_query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", rule["name"]["as"])
        .replace("<<.LabelMatchers>>", f'namespace="{namespace}",pool="{pool}"')
        .replace("<<.GroupBy>>", "namespace")
    )
    assert prometheus.values(metrics_query) == [0.0]
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == rule["name"]["as"]

    # A deleted pool's series go at the next scrape.
    fleet.custom.delete_namespaced_custom_object("gpufleet.io", "v1alpha1", namespace, "workerpools", pool)
    of_pool = f'{{namespace="{namespace}", pool="{pool}", job="{SERVICE}"}}'
    wait_for(lambda: prometheus.query(of_pool), lambda found: found == [], 60, what=f"{pool}'s series gone")
