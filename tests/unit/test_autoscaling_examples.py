"""examples/autoscaling: valid YAML, valid pools, and scalers that point at a pool they may drive."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpufleet.api.models import WorkerPool

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "autoscaling"
QUEUE_DEPTH_METRIC = "gpufleet_queue_depth"


def documents() -> dict[str, list[dict]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(EXAMPLES.glob("*.yaml"))}


def pools() -> dict[str, WorkerPool]:
    found = {}
    for docs in documents().values():
        for doc in docs:
            if doc["kind"] == "WorkerPool":
                pool = WorkerPool.model_validate(doc)
                found[pool.metadata["name"]] = pool
    return found


def test_every_example_parses_and_every_pool_is_valid() -> None:
    assert set(documents()) == {
        "workerpool-autoscaling.yaml",
        "workerpool-external.yaml",
        "keda-scaledobject.yaml",
        "hpa-external-metric.yaml",
    }
    assert pools()["sd15"].spec.autoscaling is not None


def test_scalers_target_a_pool_without_operator_sizing() -> None:
    scalers = [
        doc
        for docs in documents().values()
        for doc in docs
        if doc["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    ]
    assert {d["kind"] for d in scalers} == {"ScaledObject", "HorizontalPodAutoscaler"}
    for scaler in scalers:
        ref = scaler["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("gpufleet.io/v1alpha1", "WorkerPool")
        pool = pools()[ref["name"]]
        assert pool.spec.autoscaling is None, "external scaling needs spec.autoscaling absent"
        assert scaler["metadata"]["namespace"] == pool.metadata["namespace"]


def test_scalers_read_the_operators_queue_depth_metric() -> None:
    keda = documents()["keda-scaledobject.yaml"][0]
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert QUEUE_DEPTH_METRIC in trigger["metadata"]["query"]
    hpa, adapter = documents()["hpa-external-metric.yaml"]
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == QUEUE_DEPTH_METRIC
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["externalRules"]
    assert rules[0]["name"]["as"] == QUEUE_DEPTH_METRIC
    assert rules[0]["seriesQuery"].startswith(QUEUE_DEPTH_METRIC + "{")
