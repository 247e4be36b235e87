"""GPU inventory: what NVML reports for each GPU, or a configured simulated GPU without one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from .config import SimulatedGpu


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    product: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_percent: int | None
    simulated: bool


class GpuInventory(Protocol):
    def read(self) -> list[GpuReading]: ...

    def close(self) -> None: ...


class NoGpuError(RuntimeError):
    pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlInventory:
    """Reads every visible GPU through NVML (package nvidia-ml-py, module pynvml)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        # uuid and product never change; read them once.
        self._identity = [
            (_text(nvml.nvmlDeviceGetUUID(h)), _text(nvml.nvmlDeviceGetName(h))) for h in self._handles
        ]

    @property
    def count(self) -> int:
        return len(self._handles)

    def read(self) -> list[GpuReading]:
        readings = []
        for index, (handle, (gpu_uuid, product)) in enumerate(
            zip(self._handles, self._identity, strict=True)
        ):
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization: int | None = int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except self._nvml.NVMLError:
                utilization = None  # not supported on some GPUs and MIG slices
            readings.append(
                GpuReading(
                    index=index,
                    uuid=gpu_uuid,
                    product=product,
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    memory_free_bytes=int(memory.free),
                    utilization_percent=utilization,
                    simulated=False,
                )
            )
        return readings

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class SimulatedInventory:
    """Configured GPUs for machines without one. It reports nothing used; the engine shows
    its reservations as used memory, so CPU runs show the accounting a real GPU would."""

    def __init__(self, spec: SimulatedGpu, worker_name: str) -> None:
        self._spec = spec
        # Stable per worker name, distinct between workers, shaped like an NVML uuid.
        self.uuids = [
            f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'gpufleet-sim/{worker_name}/{i}')}"
            for i in range(spec.count)
        ]

    def read(self) -> list[GpuReading]:
        return [
            GpuReading(
                index=index,
                uuid=gpu_uuid,
                product=self._spec.product,
                memory_total_bytes=self._spec.memory,
                memory_used_bytes=0,
                memory_free_bytes=self._spec.memory,
                utilization_percent=None,
                simulated=True,
            )
            for index, gpu_uuid in enumerate(self.uuids)
        ]

    def close(self) -> None:
        pass


def open_nvml() -> NvmlInventory | None:
    """NVML's view of the GPUs, or None where there is no driver or no GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        inventory = NvmlInventory(pynvml)
    except pynvml.NVMLError:  # no libnvidia-ml, no driver, or NVML refused: no GPU
        return None
    if inventory.count == 0:
        inventory.close()
        return None
    return inventory
