"""LoRAs in the engine's VRAM model cache, with fake pipelines: a LoRA attaches to its base's
pipeline on the run's GPU (the base loaded first when it is not resident), holds only its own
VRAM, keeps its base from eviction while it runs, and goes with its base when the base is
evicted; a LoRA whose base failed is refused naming the base."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from gpufleet.localcluster.waiting import wait_for
from gpufleet_worker.config import ModelSpec, WorkerConfig
from gpufleet_worker.engine import Engine
from gpufleet_worker.errors import Refusal
from gpufleet_worker.models import Generation, Outputs, Pipeline, StepHook
from gpufleet_worker.protocol import Phase, Reason
from tests.unit.test_worker_engine_models import (
    GIB,
    GatedPipeline,
    engine_of,
    finished,
    request,
    resident,
    run,
)


class HostPipeline(GatedPipeline):
    """A base pipeline LoRAs attach to; it records attaches and detaches."""

    def __init__(self, gates: dict[str, threading.Event], name: str) -> None:
        super().__init__(gates, name)
        self.attached: list[str] = []
        self.detached: list[str] = []

    def attach_lora(self, lora: ModelSpec) -> Pipeline:
        self.attached.append(lora.name)
        return AdapterRun(self, lora.name)

    def detach_lora(self, name: str) -> None:
        self.detached.append(name)


class AdapterRun:
    tasks = GatedPipeline.tasks

    def __init__(self, host: HostPipeline, name: str) -> None:
        self.host, self.name = host, name

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        gate = self.host.gates.get(self.name)
        if gate is not None:
            gate.wait(10)
        return self.host.run(job, on_step)


class Loader:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.hosts: list[HostPipeline] = []
        self.run_gates: dict[str, threading.Event] = {}
        self.failures: set[str] = set()

    def __call__(self, spec: ModelSpec, device: str) -> HostPipeline:
        self.loads.append(spec.name)
        if spec.name in self.failures:
            raise OSError(f"{spec.name}: no such file")
        host = HostPipeline(self.run_gates, spec.name)
        self.hosts.append(host)
        return host


def lora_engine(
    tmp_path: Path, gpu_gib: int = 8, others: dict[str, int] | None = None
) -> tuple[Engine, Loader]:
    """A base ``sd`` of 4 GiB, LoRAs ``a`` and ``b`` of 1 GiB on it, and ``others`` (GiB)."""
    models: list[dict[str, Any]] = [
        {"name": "sd", "source": "file:///models/sd", "vram": "4Gi"},
        {"name": "a", "source": "file:///models/a.safetensors", "vram": "1Gi", "base": "sd"},
        {"name": "b", "source": "file:///models/b.safetensors", "vram": "1Gi", "base": "sd"},
    ]
    models += [
        {"name": n, "source": f"file:///models/{n}", "vram": f"{g}Gi"} for n, g in (others or {}).items()
    ]
    config = WorkerConfig.model_validate(
        {
            "name": "test-worker",
            "tokenFile": str(tmp_path / "token"),
            "models": models,
            "simulatedGpu": {"memory": f"{gpu_gib}Gi"},
            "localOutputRoot": str(tmp_path),
            "maxJobsPerGpu": 4,
        }
    )
    loader = Loader()
    return engine_of(config, tmp_path, loader), loader


def sizes(engine: Engine) -> dict[str, int]:
    (gpu,) = engine.snapshot().gpus
    return {m.name: m.vram_bytes for m in gpu.models}


def test_two_loras_share_one_resident_base_and_hold_only_their_own_vram(tmp_path: Path) -> None:
    engine, loader = lora_engine(tmp_path)
    first = run(engine, tmp_path, "first", "a")
    assert first.phase is Phase.SUCCEEDED, first.message
    assert first.model_load is not None and not first.model_load.warm
    assert run(engine, tmp_path, "second", "b").phase is Phase.SUCCEEDED
    assert run(engine, tmp_path, "plain", "sd").phase is Phase.SUCCEEDED
    again = run(engine, tmp_path, "again", "a")
    assert again.model_load is not None and again.model_load.warm
    assert loader.loads == ["sd"]  # the base loaded once; the LoRAs attached to it
    (host,) = loader.hosts
    assert host.attached == ["a", "b"]
    assert sizes(engine) == {"a": GIB, "b": GIB, "sd": 4 * GIB}  # 6 GiB: the base counted once
    assert engine.snapshot().gpus[0].models_bytes == 6 * GIB
    engine.shutdown()


def test_a_base_is_not_evicted_while_its_lora_runs_and_takes_its_loras_when_evicted(tmp_path: Path) -> None:
    engine, loader = lora_engine(tmp_path, gpu_gib=8, others={"big": 5})
    release = loader.run_gates["a"] = threading.Event()
    busy, _ = engine.submit(request(tmp_path, "busy", "a"))
    wait_for(lambda: bool(loader.hosts) and loader.hosts[0].attached == ["a"], bool, 10, what="a attached")
    # sd (4) + a (1) + 1 reserved: big (5) + 1 does not fit, and neither sd nor a may go.
    with pytest.raises(Refusal) as refused:
        engine.submit(request(tmp_path, "big", "big"))
    assert refused.value.reason is Reason.INSUFFICIENT_VRAM
    assert resident(engine.snapshot()) == {"a": "Loaded", "sd": "Loaded"}
    release.set()
    assert finished(engine, busy.run_id).phase is Phase.SUCCEEDED
    # Idle now: big evicts the base, and its LoRA goes with it (detached, not left behind).
    assert run(engine, tmp_path, "big", "big").phase is Phase.SUCCEEDED
    assert resident(engine.snapshot()) == {"big": "Loaded"}
    assert loader.hosts[0].detached == ["a"]
    models = {m.name: m for m in engine.snapshot().models}
    assert (models["sd"].evictions, models["a"].evictions) == (1, 1)
    # The LoRA comes back on a fresh copy of its base.
    assert run(engine, tmp_path, "back", "a").phase is Phase.SUCCEEDED
    assert loader.loads == ["sd", "big", "sd"] and loader.hosts[-1].attached == ["a"]
    engine.shutdown()


def test_a_lora_alone_is_detached_to_make_room_while_its_base_stays(tmp_path: Path) -> None:
    engine, loader = lora_engine(tmp_path, gpu_gib=7, others={"small": 1})
    for job, model in [("1", "a"), ("2", "b"), ("3", "sd")]:  # a is the least recently used
        assert run(engine, tmp_path, job, model).phase is Phase.SUCCEEDED
    # sd 4 + a 1 + b 1 = 6 of 7; small (1) + 1 reserved needs 2: a goes, alone.
    assert run(engine, tmp_path, "4", "small").phase is Phase.SUCCEEDED
    assert resident(engine.snapshot()) == {"b": "Loaded", "sd": "Loaded", "small": "Loaded"}
    assert loader.hosts[0].detached == ["a"] and loader.loads == ["sd", "small"]
    engine.shutdown()


def test_a_lora_whose_base_fails_to_load_fails_and_is_then_refused_naming_the_base(tmp_path: Path) -> None:
    engine, loader = lora_engine(tmp_path)
    loader.failures.add("sd")
    failed = run(engine, tmp_path, "first", "a")
    assert (failed.phase, failed.reason) == (Phase.FAILED, Reason.MODEL_FAILED)
    assert "its base model sd did not load" in failed.message and "no such file" in failed.message
    with pytest.raises(Refusal) as refused:
        engine.submit(request(tmp_path, "later", "b"))
    assert refused.value.reason is Reason.MODEL_FAILED and "its base model sd" in refused.value.message
    (gpu,) = engine.snapshot().gpus
    assert gpu.models == [] and gpu.reserved_bytes == 0  # nothing held by the failed loads
    engine.shutdown()


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ([{"name": "a", "source": "file:///a", "vram": "1Gi", "base": "nope"}], "not so for: a"),
        (
            [
                {"name": "sd", "source": "builtin://tiny-sd", "vram": "1Gi"},
                {"name": "a", "source": "file:///a", "vram": "1Gi", "base": "sd"},
            ],
            "not so for: a",
        ),
        (
            [
                {"name": "sd", "source": "file:///sd", "vram": "1Gi"},
                {"name": "a", "source": "file:///a", "vram": "1Gi", "base": "sd"},
                {"name": "b", "source": "file:///b", "vram": "1Gi", "base": "a"},
            ],
            "not so for: b",
        ),
    ],
    ids=["unknown-base", "builtin-base", "lora-on-a-lora"],
)
def test_a_base_that_is_not_one_of_the_models_is_refused_naming_the_field(
    tmp_path: Path, models: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(ValueError, match=r"models\[\]\.base") as error:
        WorkerConfig.model_validate({"tokenFile": str(tmp_path / "t"), "models": models})
    assert problem in str(error.value)
