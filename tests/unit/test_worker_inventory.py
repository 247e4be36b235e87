"""GPU inventory: NVML readings (through a stand-in NVML module) and the simulated GPU."""

from __future__ import annotations

from types import SimpleNamespace

from gpufleet_worker.config import SimulatedGpu
from gpufleet_worker.inventory import NvmlInventory, SimulatedInventory


class FakeNvml:
    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle}".encode()  # older bindings return bytes

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA A100-SXM4-40GB"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=40 * 2**30, used=(handle + 1) * 2**30, free=(39 - handle) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle == 1:
            raise self.NVMLError("Not Supported")  # MIG slices report no utilization
        return SimpleNamespace(gpu=87, memory=40)


def test_nvml_readings_per_gpu() -> None:
    nvml = FakeNvml()
    inventory = NvmlInventory(nvml)
    first, second = inventory.read()
    assert (first.uuid, first.product, first.simulated) == ("GPU-0", "NVIDIA A100-SXM4-40GB", False)
    assert (first.memory_total_bytes, first.memory_used_bytes, first.memory_free_bytes) == (
        40 * 2**30,
        2**30,
        39 * 2**30,
    )
    assert first.utilization_percent == 87
    assert second.utilization_percent is None
    inventory.close()
    assert nvml.shut_down


def test_simulated_gpus_are_stable_per_worker_and_distinct_between_workers() -> None:
    spec = SimulatedGpu(product="Sim-L4", memory="24Gi", count=2)
    a, again, b = (SimulatedInventory(spec, name) for name in ("worker-a", "worker-a", "worker-b"))
    assert a.uuids == again.uuids and len(set(a.uuids + b.uuids)) == 4
    readings = a.read()
    assert [r.product for r in readings] == ["Sim-L4", "Sim-L4"]
    assert all(r.simulated and r.memory_total_bytes == 24 * 2**30 for r in readings)
