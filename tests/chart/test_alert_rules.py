"""The chart's alerts pass their unit tests under promtool (built from Prometheus' Go module),
and every alert has one."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from gpufleet.localcluster import binaries

from .conftest import REPO_ROOT

ALERT_TESTS = REPO_ROOT / "tests" / "chart" / "alerts" / "gpufleet-alerts.test.yaml"


def rules(render) -> list[dict]:
    (rule,) = [d for d in render({"prometheusRule": {"enabled": True}}) if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def test_every_alert_passes_its_promtool_unit_tests(render, tmp_path):
    (tmp_path / "gpufleet-rules.yaml").write_text(yaml.safe_dump({"groups": rules(render)}))
    tests = tmp_path / ALERT_TESTS.name
    shutil.copy(ALERT_TESTS, tests)
    result = subprocess.run(
        [str(binaries.ensure("promtool")), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test(render):
    alerts = {r["alert"] for group in rules(render) for r in group["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts == tested
