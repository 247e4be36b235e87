"""What the engine knows of each model and of its loads, and how the inventory shows it.

A ``Model`` is one configured model: what it can do once known, its resident pipelines per
GPU, its loads in flight and its counters. Which models each GPU holds, and what they weigh,
is in that GPU's ``GpuBudget`` (admission), the single record of residency.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gpufleet.api.inputs import Task

from .admission import GpuBudget
from .config import ModelSpec
from .models import Pipeline
from .protocol import ModelInfo, ModelState, ResidentModel

if TYPE_CHECKING:
    from .engine import Run


class ModelFailed(Exception):
    """The run's model could not be loaded; the message says why."""


class TaskNotDone(Exception):
    """The model, once loaded, turned out not to do the run's task."""


@dataclass
class Load:
    """One load of a model onto one GPU; the runs admitted for it wait on ``done``."""

    gpu: str
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    waiting: list[Run] = field(default_factory=list)
    last_event: float = 0.0  # monotonic time of the last download progress event


@dataclass
class Model:
    spec: ModelSpec
    tasks: frozenset[Task] | None  # declared, or what the loaded pipeline does; None: unknown yet
    pipelines: dict[str, Pipeline] = field(default_factory=dict)  # GPU uuid -> resident pipeline
    loads_in_flight: dict[str, Load] = field(default_factory=dict)  # GPU uuid -> load
    failure: str | None = None
    retry_at: float | None = None  # monotonic time of the next try of a failed model; None: not retried
    transient_failures: int = 0  # in a row, since it last worked
    load_seconds: float | None = None
    loads: int = 0
    evictions: int = 0
    warm_hits: int = 0


def resident_models(budget: GpuBudget, wall: datetime, monotonic: float) -> list[ResidentModel]:
    """The models one GPU holds; ``wall`` and ``monotonic`` are the same instant on both
    clocks (last use is kept on the monotonic one)."""
    return [
        ResidentModel(
            name=cached.name,
            vram_bytes=cached.size_bytes,
            state=ModelState.LOADING if cached.name in budget.loading else ModelState.LOADED,
            running_jobs=cached.in_use - (cached.name in budget.loading),  # a load holds one use
            pinned=cached.pinned,
            last_used_at=wall - timedelta(seconds=monotonic - cached.last_used),
        )
        for cached in sorted(budget.models.values(), key=lambda c: c.name)
    ]


def model_info(
    model: Model, budgets: Iterable[GpuBudget], disk_bytes: int | None, wall: datetime, monotonic: float
) -> ModelInfo:
    """What the inventory says of one model; ``disk_bytes`` as ModelFiles.on_disk_bytes;
    ``wall`` and ``monotonic`` the same instant on both clocks."""
    name = model.spec.name
    budgets = list(budgets)
    resident = sorted(b.uuid for b in budgets if name in b.models and name not in b.loading)
    loading = sorted(b.uuid for b in budgets if name in b.loading)
    state = (
        ModelState.FAILED
        if model.failure is not None
        else ModelState.LOADED
        if resident
        else ModelState.LOADING
        if loading
        else ModelState.AVAILABLE
    )
    return ModelInfo(
        name=name,
        source=model.spec.source,
        vram_bytes=model.spec.vram,
        tasks=sorted(model.tasks or ()),
        state=state,
        load_seconds=model.load_seconds,
        message=model.failure or "",
        retry_at=None if model.retry_at is None else wall + timedelta(seconds=model.retry_at - monotonic),
        resident_gpus=resident,
        loading_gpus=loading,
        on_disk=disk_bytes is not None,
        disk_bytes=disk_bytes or None,  # None: no files in the disk cache (image, volume, built in)
        preload=model.spec.preload,
        loads=model.loads,
        evictions=model.evictions,
        warm_hits=model.warm_hits,
    )
