"""Caption and visual question answering with a transformers image-text-to-text model
(LLaVA, BLIP-2, Qwen-VL class) saved in a local directory with its processor.

Generated tokens stream out as progress (tokens generated of input.caption.maxNewTokens,
with the end of the text generated so far); cancellation takes effect at the next token.
The answer is the run's text result and the artifact answer.txt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import torch

from gpufleet.api.inputs import MAX_PROGRESS_TEXT_CHARS, CaptionInput, Task

from . import TEXT, Generation, OutputFile, Outputs, StepHook, plural

DEFAULT_QUESTION = "Describe the image."
# transformers samples from torch's global generator, so sampled runs take turns: each seeds
# it, and two at once would draw from each other's stream. Greedy runs need no generator.
_SAMPLING = threading.Lock()


class TokenProgress:
    """A generate() streamer that reports each new token with the end of the text so far.
    The first put() is the prompt. Only the last ``MAX_PROGRESS_TEXT_CHARS`` tokens are
    decoded per report (a token is at least a character in practice), so a report costs
    the same at the first token as at the thousandth."""

    def __init__(self, on_step: StepHook, max_new_tokens: int, decode: Callable[[list[int]], str]) -> None:
        self.on_step, self.max_new_tokens, self.decode = on_step, max_new_tokens, decode
        self.tokens: list[int] = []
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.extend(int(token) for token in value.reshape(-1).tolist())
        # A multi-byte character split across tokens decodes as U+FFFD until it is whole.
        text = self.decode(self.tokens[-MAX_PROGRESS_TEXT_CHARS:]).strip("\ufffd").lstrip()
        generated = min(len(self.tokens), self.max_new_tokens)
        self.on_step(generated, self.max_new_tokens, text=text)

    def end(self) -> None:
        pass


class VisionLanguagePipeline:
    tasks = frozenset({Task.CAPTION})

    def __init__(self, directory: str, device: str) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
        # transformers types .to() on this class as a decorator's; it is the module's .to().
        self.model: Any = cast(
            Any, AutoModelForImageTextToText.from_pretrained(directory, local_files_only=True, dtype=dtype)
        )
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype

    def _prompt(self, question: str, images: int) -> str:
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
        return question  # processors without a chat template (BLIP-2) take the text as it is

    def _decode(self, tokens: list[int]) -> str:
        return self.processor.decode(tokens, skip_special_tokens=True)

    @torch.inference_mode()
    def run(self, job: Generation, on_step: StepHook) -> Outputs:
        if job.image is None:
            raise ValueError("input.image is required for caption")
        settings = job.input.caption or CaptionInput()
        images = [job.image, *job.extra_images]
        prompt = self._prompt(job.input.prompt or DEFAULT_QUESTION, len(images))
        inputs = self.processor(images=images, text=prompt, return_tensors="pt")
        inputs = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
        }
        sampling = settings.temperature > 0
        arguments: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "min_new_tokens": 1,
            "do_sample": sampling,
            "streamer": TokenProgress(on_step, settings.max_new_tokens, self._decode),
        }
        if sampling:
            arguments |= {"temperature": settings.temperature, "top_p": settings.top_p}
            with _SAMPLING, torch.random.fork_rng(devices=[self.device] if self.device != "cpu" else []):
                torch.manual_seed(job.seed)
                output = self.model.generate(**inputs, **arguments)
        else:
            output = self.model.generate(**inputs, **arguments)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        text = self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()
        count = int(new_tokens.shape[1])
        return Outputs(
            files=[OutputFile("answer.txt", text.encode(), TEXT)],
            text=text,
            summary=f"{plural(count, 'token')} of text",
        )
