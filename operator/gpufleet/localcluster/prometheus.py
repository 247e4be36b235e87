"""A real Prometheus on loopback, for tests: scrapes what its config names, answers PromQL.

Prometheus and promtool are built from their Go module the first time
(``binaries.ensure("prometheus")``). Each server gets a free port and a fresh data folder;
``stop()`` leaves no process behind.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from . import binaries
from .processes import ManagedProcess, ProcessExited, free_port
from .waiting import wait_for

# Prometheus Operator's RelabelConfig fields and Prometheus' relabel_config keys.
RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "separator": "separator",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}


def relabel_configs(relabelings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ServiceMonitor's relabelings as Prometheus relabel_configs."""
    configs = []
    for relabeling in relabelings:
        if unknown := set(relabeling) - set(RELABEL_KEYS):
            raise ValueError(f"relabeling {relabeling}: unknown fields {sorted(unknown)}")
        config = {RELABEL_KEYS[key]: value for key, value in relabeling.items()}
        if "action" in config:
            config["action"] = str(config["action"]).lower()
        configs.append(config)
    return configs


def service_monitor_scrape(
    job: str, endpoint: dict[str, Any], targets: list[tuple[str, dict[str, str]]], interval: str
) -> dict[str, Any]:
    """The scrape job the Prometheus Operator makes of a ServiceMonitor endpoint, with static
    targets (address, the labels its Kubernetes discovery would set) in place of discovery."""
    return {
        "job_name": job,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": endpoint.get("path", "/metrics"),
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "static_configs": [{"targets": [address], "labels": labels} for address, labels in targets],
        "relabel_configs": relabel_configs(endpoint.get("relabelings", [])),
        "metric_relabel_configs": relabel_configs(endpoint.get("metricRelabelings", [])),
    }


class QueryError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, scrape_configs: list[dict[str, Any]], data_dir: Path | None = None) -> None:
        self.scrape_configs = scrape_configs
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="gpufleet-prometheus-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusServer:
        prometheus = binaries.ensure("prometheus")
        config = self.data_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump({"scrape_configs": self.scrape_configs}, sort_keys=False))
        self.port = free_port()
        self.process = ManagedProcess(
            "prometheus",
            [
                str(prometheus),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            self.data_dir / "prometheus.log",
        )
        try:
            wait_for(self._ready, bool, timeout, interval=0.1, what=f"Prometheus at {self.url}")
        except Exception:
            log = self.process.log_tail()
            self.stop()
            raise RuntimeError(f"Prometheus did not start; its log ends:\n{log}") from None
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise ProcessExited(f"prometheus exited with {self.process.popen.returncode}")
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        body = httpx.get(f"{self.url}{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise QueryError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector query's series: each has ``metric`` (labels) and ``value``."""
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] != "vector":
            raise QueryError(f"{expr}: a {data['resultType']}, not an instant vector")
        return data["result"]

    def values(self, expr: str) -> list[float]:
        return [float(series["value"][1]) for series in self.query(expr)]

    def finite_values(self, expr: str) -> list[float]:
        return [v for v in self.values(expr) if math.isfinite(v)]

    def series(self, match: str) -> list[dict[str, str]]:
        return self._get("/api/v1/series", {"match[]": match})

    def label_values(self, label: str, match: str) -> list[str]:
        return self._get(f"/api/v1/label/{label}/values", {"match[]": match})

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets", {})["activeTargets"]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
