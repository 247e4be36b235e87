"""Mask generation with a transformers SAM or SAM 2 model saved in a local directory.

The directory holds ``SamModel`` weights and a ``SamProcessor``, or SAM 2 weights (saved
from ``Sam2Model`` or from the video model ``Sam2VideoModel``) and a ``Sam2Processor`` or
``Sam2VideoProcessor`` (``save_pretrained`` layout); the saved config's model_type says
which. SAM 2 runs as ``Sam2Model`` on single images either way. Boxes give one object each;
points without a box give one object; points with one box refine it. Every mask is written
as a PNG of the input's size (white is the object), and masks.json gives each mask's score,
bounding box, area and run-length encoding.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from gpufleet.api.inputs import SEGMENT_STAGES, PointLabel, SegmentInput, Task

from ..fetch import InputRefused
from . import JSON, PNG, SAM2_TYPES, Generation, OutputFile, Outputs, StepHook, encode_png, plural


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed run-length encoding: runs over the mask in column-major order,
    starting with a run of zeros (possibly empty)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def bounding_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] of the mask's pixels (x1, y1 exclusive), or None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def prompt_problems(prompts: SegmentInput, width: int, height: int) -> list[str]:
    """Prompts that fall outside the image, naming each."""
    problems = []
    for index, point in enumerate(prompts.points):
        if point.x >= width or point.y >= height:
            problems.append(
                f"input.segment.points[{index}]: ({point.x:g}, {point.y:g}) is outside the "
                f"{width}x{height} image"
            )
    for index, box in enumerate(prompts.boxes):
        if box.x1 > width or box.y1 > height:
            problems.append(
                f"input.segment.boxes[{index}]: ({box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g}) "
                f"reaches outside the {width}x{height} image"
            )
    return problems


class MaskGenerationPipeline:
    tasks = frozenset({Task.SEGMENT})

    def __init__(self, directory: str, device: str) -> None:
        from transformers import AutoConfig, AutoModelForMaskGeneration, AutoProcessor, Sam2Processor

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        # A video model's directory names its video processor; images need the image one only.
        processor_class = Sam2Processor if config.model_type in SAM2_TYPES else AutoProcessor
        self.processor = processor_class.from_pretrained(directory, local_files_only=True)
        self.model: Any = AutoModelForMaskGeneration.from_pretrained(
            directory, config=config, local_files_only=True, dtype=dtype
        )
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype

    def _prompt_arguments(self, prompts: SegmentInput) -> dict[str, Any]:
        """The processor's nested prompt lists: [image][object][point]."""
        arguments: dict[str, Any] = {}
        if prompts.boxes:
            arguments["input_boxes"] = [[[b.x0, b.y0, b.x1, b.y1] for b in prompts.boxes]]
        if prompts.points:
            arguments["input_points"] = [[[[p.x, p.y] for p in prompts.points]]]
            arguments["input_labels"] = [[[int(p.label is PointLabel.FOREGROUND) for p in prompts.points]]]
        return arguments

    @torch.inference_mode()
    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        if job.image is None or job.input.segment is None:
            raise ValueError("input.image and input.segment are required for segment")
        prompts = job.input.segment
        width, height = job.image.size
        if problems := prompt_problems(prompts, width, height):
            raise InputRefused("; ".join(problems))
        inputs = self.processor(job.image, return_tensors="pt", **self._prompt_arguments(prompts))
        inputs = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
        }
        on_step(1, len(SEGMENT_STAGES), SEGMENT_STAGES[0])
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"])
        on_step(2, len(SEGMENT_STAGES), SEGMENT_STAGES[1])
        prompt_inputs = {k: v for k, v in inputs.items() if k.startswith("input_")}
        result = self.model(image_embeddings=embeddings, multimask_output=prompts.multimask, **prompt_inputs)
        # SAM pads its resized image to a square, so its masks are cropped to the resized size
        # before they are upscaled; SAM 2 resizes to its square and needs the original size only.
        sizes = [inputs["original_sizes"].cpu()]
        if "reshaped_input_sizes" in inputs:
            sizes.append(inputs["reshaped_input_sizes"].cpu())
        upscaled = self.processor.post_process_masks(result.pred_masks.float().cpu(), *sizes)
        masks = upscaled[0].numpy()  # [object, candidate, height, width], boolean
        scores = result.iou_scores.float().cpu().numpy()[0]  # [object, candidate]
        on_step(3, len(SEGMENT_STAGES), SEGMENT_STAGES[2])
        files, described = [], []
        for obj in range(masks.shape[0]):
            for candidate in range(masks.shape[1]):
                mask = masks[obj, candidate]
                name = f"mask-{obj}-{candidate}.png"
                image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
                files.append(OutputFile(name, encode_png(image), PNG, (width, height)))
                described.append(
                    {
                        "file": name,
                        "object": obj,
                        "score": round(float(scores[obj, candidate]), 6),
                        "box": bounding_box(mask),
                        "area": int(mask.sum()),
                        "rle": rle(mask),
                    }
                )
        summary = {"width": width, "height": height, "masks": described}
        files.append(OutputFile("masks.json", json.dumps(summary, separators=(",", ":")).encode(), JSON))
        on_step(4, len(SEGMENT_STAGES), SEGMENT_STAGES[3])
        return Outputs(
            files=files, summary=f"{plural(len(described), 'mask')} of {plural(masks.shape[0], 'object')}"
        )
