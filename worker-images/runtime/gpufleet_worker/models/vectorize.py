"""``builtin://vtracer``: raster to SVG with vtracer (visioncortex), on the CPU.

No weights and no GPU work: the run holds a nominal VRAM reservation only so that it counts
against the worker's job slots like any other run.
"""

from __future__ import annotations

from gpufleet.api.inputs import VECTORIZE_STAGES, Task, TraceMode, VectorizeInput

from . import SVG, Generation, OutputFile, Outputs, StepHook, encode_png

# vtracer calls the pixel mode "none" (no curve fitting: every pixel edge is kept).
VTRACER_MODES = {TraceMode.SPLINE: "spline", TraceMode.POLYGON: "polygon", TraceMode.PIXEL: "none"}


class VTracerPipeline:
    tasks = frozenset({Task.VECTORIZE})

    def __init__(self, device: str) -> None:
        import vtracer  # fail at load, not at the first job, when the package is missing

        self._vtracer = vtracer

    def _stage(self, on_step: StepHook, index: int) -> None:
        on_step(index + 1, len(VECTORIZE_STAGES), VECTORIZE_STAGES[index])

    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        if job.image is None:
            raise ValueError("input.image is required for vectorize")
        options = job.input.vectorize or VectorizeInput()
        png = encode_png(job.image.convert("RGBA"))
        self._stage(on_step, 0)
        svg = self._vtracer.convert_raw_image_to_svg(
            png,
            img_format="png",
            colormode=options.color_mode.value,
            hierarchical=options.hierarchy.value,
            mode=VTRACER_MODES[options.mode],
            filter_speckle=options.filter_speckle,
            color_precision=options.color_precision,
            layer_difference=options.layer_difference,
            corner_threshold=options.corner_threshold,
            length_threshold=options.length_threshold,
            splice_threshold=options.splice_threshold,
            path_precision=options.path_precision,
        )
        self._stage(on_step, 1)
        data = svg.encode()
        self._stage(on_step, 2)
        paths = svg.count("<path")
        return Outputs(
            files=[OutputFile("image.svg", data, SVG, job.image.size)],
            summary=f"an SVG of {paths} path{'s' if paths != 1 else ''}",
        )
