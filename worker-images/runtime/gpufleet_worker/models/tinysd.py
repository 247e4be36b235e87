"""``builtin://tiny-sd``: a tiny, untrained text-to-image diffusion model for smoke tests.

It is honest about what it is: the architecture of a latent diffusion model in miniature (a
hashed-word text encoder, a small UNet-style denoiser conditioned on time and text, a DDIM
sampler with classifier-free guidance, and a fixed analytic latent codec), with weights
drawn from a fixed seed instead of trained. It exercises everything a real model does on a
worker (VRAM, steps, progress, cancellation, seeds, batches, PNG artifacts) and produces
abstract, noise-like colour patterns that depend on prompt and seed. It does not draw what
the prompt says. Output is deterministic for a seed on a given device.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gpufleet.api.inputs import Task

from . import Generation, ImagePipeline, StepHook, total_steps

LATENT_CHANNELS = 4
LATENT_SCALE = 8  # pixels per latent cell, as in Stable Diffusion
TRAIN_STEPS = 1000
WEIGHT_SEED = 1234  # the weights are a pure function of this seed
VOCAB = 4096
EMBED = 64
WIDTH = 32


def word_ids(prompt: str) -> list[int]:
    """Words hashed into the vocabulary: stable across processes (unlike hash())."""
    return [zlib.crc32(word.encode()) % VOCAB for word in prompt.lower().split()]


class TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(VOCAB, EMBED)
        self.project = nn.Linear(EMBED, EMBED)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = word_ids(prompt)
            if ids:
                words = self.table(torch.tensor(ids, device=self.table.weight.device))
                rows.append(words.mean(dim=0))
            else:  # the empty prompt is the unconditional embedding
                rows.append(torch.zeros(EMBED, device=self.table.weight.device))
        return self.project(torch.stack(rows))


def timestep_embedding(t: torch.Tensor, dim: int = EMBED) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """Conv residual block whose features are scaled and shifted by the embedding (FiLM)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.film = nn.Linear(EMBED, 2 * channels_out)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Denoiser(nn.Module):
    """A two-level UNet that predicts the clean latent (x0) from a noisy one.

    The prediction is preconditioned with a skip connection, as in EDM: at low noise it is
    mostly the input itself, at high noise mostly the network. So light image-to-image edits
    keep their input even though the network is untrained.
    """

    def __init__(self) -> None:
        super().__init__()
        self.time = nn.Sequential(nn.Linear(EMBED, EMBED), nn.SiLU(), nn.Linear(EMBED, EMBED))
        self.stem = nn.Conv2d(LATENT_CHANNELS, WIDTH, 3, padding=1)
        self.down = ResBlock(WIDTH, WIDTH)
        self.downsample = nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * WIDTH, 2 * WIDTH)
        self.upconv = nn.Conv2d(2 * WIDTH, WIDTH, 3, padding=1)
        self.up = ResBlock(2 * WIDTH, WIDTH)
        self.out_norm = nn.GroupNorm(8, WIDTH)
        self.out = nn.Conv2d(WIDTH, LATENT_CHANNELS, 3, padding=1)
        self.palette = nn.Linear(EMBED, LATENT_CHANNELS)  # the prompt's overall colour

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        emb = self.time(timestep_embedding(t)) + text
        skip = self.down(self.stem(x), emb)
        h = self.mid(self.downsample(skip), emb)
        h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
        h = self.up(torch.cat([self.upconv(h), skip], dim=1), emb)
        guess = torch.tanh(self.out(F.silu(self.out_norm(h))) + self.palette(text)[:, :, None, None])
        return alpha.sqrt() * x + (1 - alpha) * guess


class Codec(nn.Module):
    """Fixed latent <-> pixel mapping: three latent channels are a low-resolution RGB image,
    the fourth drives a texture the decoder adds. Encoding is an 8x8 average."""

    def __init__(self) -> None:
        super().__init__()
        self.texture = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, 16, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 3, 3, padding=1),
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        full = F.interpolate(latents, scale_factor=LATENT_SCALE, mode="bilinear", align_corners=False)
        return (full[:, :3] + 0.25 * torch.tanh(self.texture(full))).clamp(-1, 1)

    @staticmethod
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        rgb = F.avg_pool2d(pixels, LATENT_SCALE)
        return torch.cat([rgb, rgb.mean(dim=1, keepdim=True)], dim=1)


def ddim_timesteps(steps: int) -> list[int]:
    stride = TRAIN_STEPS // steps
    return [min(TRAIN_STEPS - 1, i * stride + 1) for i in reversed(range(steps))]


def alphas_cumprod() -> torch.Tensor:
    # Stable Diffusion's "scaled linear" beta schedule.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def to_pixels(image: Image.Image, width: int, height: int, device: torch.device) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1
    return tensor[None].to(device)


class TinySD(ImagePipeline):
    tasks = frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT})

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(WEIGHT_SEED)
            self.text = TextEncoder()
            self.denoiser = Denoiser()
            self.codec = Codec()
        for module in (self.text, self.denoiser, self.codec):
            module.to(self.device).eval().requires_grad_(False)
        self.alphas = alphas_cumprod().to(self.device)

    @torch.inference_mode()
    def generate(self, job: Generation, on_step: StepHook) -> list[Image.Image]:
        spec = job.input
        batch = spec.num_images
        shape = (batch, LATENT_CHANNELS, spec.height // LATENT_SCALE, spec.width // LATENT_SCALE)
        # Noise comes from a CPU generator, so a seed means the same noise on every device.
        generator = torch.Generator().manual_seed(job.seed)
        noise = torch.randn(shape, generator=generator).to(self.device)
        text = self.text([spec.prompt] * batch + [spec.negative_prompt] * batch)

        schedule = ddim_timesteps(spec.steps)
        original = mask = None
        if job.task is Task.TEXT_TO_IMAGE:
            latents = noise
        else:
            if job.image is None:
                raise ValueError("input.image is required for this task")
            original = self.codec.encode(to_pixels(job.image, spec.width, spec.height, self.device))
            original = original.expand(batch, -1, -1, -1)
            schedule = schedule[len(schedule) - total_steps(job) :]
            a = self.alphas[schedule[0]]
            latents = a.sqrt() * original + (1 - a).sqrt() * noise
            if job.task is Task.INPAINT:
                if job.mask is None:
                    raise ValueError("input.mask is required for task inpaint")
                mask_pixels = to_pixels(job.mask, spec.width, spec.height, self.device)
                mask = (F.avg_pool2d(mask_pixels.mean(dim=1, keepdim=True), LATENT_SCALE) > 0).float()

        for index, t in enumerate(schedule):
            a = self.alphas[t]
            a_prev = self.alphas[schedule[index + 1]] if index + 1 < len(schedule) else torch.ones(())
            timesteps = torch.full((2 * batch,), t, device=self.device)
            x0_cond, x0_uncond = self.denoiser(latents.repeat(2, 1, 1, 1), timesteps, a, text).chunk(2)
            x0 = (x0_uncond + spec.guidance_scale * (x0_cond - x0_uncond)).clamp(-1, 1)
            eps = (latents - a.sqrt() * x0) / (1 - a).sqrt()
            latents = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM, eta = 0
            if mask is not None and original is not None:
                # Keep the unmasked part on the original image's noise trajectory.
                kept = a_prev.sqrt() * original + (1 - a_prev).sqrt() * noise
                latents = mask * latents + (1 - mask) * kept
            on_step(index + 1, len(schedule))

        pixels = ((self.codec.decode(latents) + 1) * 127.5).round().to(torch.uint8)
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(array, mode="RGB") for array in arrays]
