"""builtin:// models: no files to load (gpufleet.api.capabilities lists what each does)."""

from __future__ import annotations

from collections.abc import Callable

from . import Pipeline


def _tiny_sd(device: str) -> Pipeline:
    from .tinysd import TinySD

    return TinySD(device)


def _vtracer(device: str) -> Pipeline:
    from .vectorize import VTracerPipeline

    return VTracerPipeline(device)


BUILTIN_MODELS: dict[str, Callable[[str], Pipeline]] = {"tiny-sd": _tiny_sd, "vtracer": _vtracer}
