"""Puts a worker together from its config: token, GPUs (real or simulated), store, engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .artifacts import ArtifactStore, make_s3_client
from .auth import TokenFile
from .config import WorkerConfig
from .engine import Engine, Loader
from .inventory import GpuInventory, NoGpuError, SimulatedInventory, open_nvml
from .metrics import WorkerMetrics
from .models import load_pipeline
from .protocol import ModelState
from .sources import DiskModelFiles


@dataclass
class Runtime:
    config: WorkerConfig
    tokens: TokenFile
    engine: Engine
    metrics: WorkerMetrics


def open_gpus(config: WorkerConfig) -> tuple[GpuInventory, dict[str, str]]:
    """The inventory, and the torch device each GPU's runs use (keyed by GPU uuid)."""
    nvml = None if config.device == "cpu" else open_nvml()
    if nvml is not None:
        if not torch.cuda.is_available():
            nvml.close()
            raise NoGpuError("NVML sees a GPU but torch has no CUDA: install a CUDA build of torch")
        # CUDA_DEVICE_ORDER=PCI_BUS_ID (set by the entry point) makes cuda:i NVML's GPU i.
        return nvml, {reading.uuid: f"cuda:{reading.index}" for reading in nvml.read()}
    if config.device == "cuda":
        raise NoGpuError("device is cuda but NVML finds no GPU")
    # Without a GPU, runs use the CPU with one thread each: concurrent runs share the cores
    # instead of fighting over them.
    torch.set_num_threads(1)
    simulated = SimulatedInventory(config.simulated_gpu, config.name)
    return simulated, dict.fromkeys(simulated.uuids, "cpu")


def open_runtime(config: WorkerConfig, loader: Loader = load_pipeline) -> Runtime:
    tokens = TokenFile(config.token_file)
    inventory, devices = open_gpus(config)
    metrics = WorkerMetrics()
    s3 = make_s3_client(config.s3)
    store = ArtifactStore(s3, config.local_output_root)

    def loading() -> set[str]:
        # Models whose files a GPU load may be reading: never removed from the disk cache.
        return {m.name for m in engine.snapshot().models if m.state is ModelState.LOADING or m.loading_gpus}

    model_files = DiskModelFiles(
        s3, config.model_cache.path, config.model_cache.capacity, config.pvc_mounts, loading
    )
    engine = Engine(
        config=config,
        inventory=inventory,
        devices=devices,
        store=store,
        metrics=metrics,
        loader=loader,
        model_files=model_files,
    )
    metrics.watch_gpus(engine.gpu_readings)
    return Runtime(config=config, tokens=tokens, engine=engine, metrics=metrics)
