"""LoRA fine-tuning of a diffusers Stable Diffusion pipeline directory (task train), with peft.

The run reads its whole dataset first, so a missing or empty dataset fails before any
training step. It trains adapters on fresh copies of the directory's UNet (and optionally its
text encoder): the served pipeline is never changed. Every ``checkpointEverySteps`` it writes
``<output>/checkpoints/step-<n>/`` (LoRA weights, then optimizer, scheduler, RNG and step, then
checkpoint.json listing each file's SHA-256, last, so a folder without it is incomplete). A
later attempt of the same job starts from the newest complete checkpoint of the same input.
All randomness comes from one generator whose state is checkpointed, and the data order of
each epoch from the seed alone, so a resumed run continues exactly where the checkpoint was.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gpufleet.api.inputs import MixedPrecision, TrainingDataset, TrainingInput

from ..fetch import InputFetchFailed, InputRefused, decode_image
from ..outputs import check_output
from ..protocol import Artifact, Checkpoint, TrainingProgress
from . import (
    PNG,
    SAFETENSORS,
    Generation,
    OutputFile,
    Outputs,
    StepHook,
    TrainingDiverged,
    Workspace,
    encode_png,
)

log = logging.getLogger("gpufleet_worker.train")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_DATASET_ITEMS = 10_000
MAX_IMAGE_BYTES = 64 * 2**20
MAX_CAPTION_BYTES = 64 * 2**10
MAX_CHECKPOINT_BYTES = 2**36
WEIGHTS = "pytorch_lora_weights.safetensors"
CHECKPOINT_WEIGHTS = "lora.safetensors"
STATE = "training_state.pt"
MANIFEST = "checkpoint.json"
CHECKPOINTS = "checkpoints/"
STEP_FOLDER = re.compile(r"checkpoints/step-(\d+)/checkpoint\.json$")
TEXT_ENCODER_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
SMOOTHING = 0.9  # weight of the past in the smoothed loss
# A run reports (and sees a cancel) at most this often, besides its first and last steps and
# the steps that wrote something: a long run's event log stays small. Each report carries the
# latest checkpoints and samples only (every sample is an artifact of the finished run).
REPORT_SECONDS = 2.0
REPORTED_CHECKPOINTS = 20
REPORTED_SAMPLES = 16
MAX_GRAD_NORM = 1.0


@dataclass
class Example:
    pixels: torch.Tensor  # 3 x resolution x resolution in [-1, 1]
    input_ids: torch.Tensor


@dataclass
class Progress:
    """What a run has done so far; restored from a checkpoint on resume."""

    step: int = 0
    smoothed_loss: float | None = None
    resumed_from: int | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    samples: list[Artifact] = field(default_factory=list)


# --- dataset ------------------------------------------------------------------------------


def dataset_pairs(workspace: Workspace, dataset: TrainingDataset) -> list[tuple[str, str]]:
    """(image URI, caption) of every example; InputFetchFailed when the store cannot be read,
    InputRefused when it holds no example."""
    store = workspace.store
    if dataset.manifest is not None:
        where = f"training.dataset.manifest {dataset.manifest}"
        try:
            text = store.read_object(dataset.manifest, MAX_IMAGE_BYTES).decode("utf-8")
        except Exception as error:  # boto3's many error types all mean "could not read"
            raise InputFetchFailed(f"{where}: {error}") from error
        pairs = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                pairs.append((str(entry["image"]), str(entry["caption"])))
            except (ValueError, KeyError, TypeError) as error:
                raise InputRefused(
                    f'{where}, line {number}: expected {{"image": "s3://...", "caption": "..."}} ({error})'
                ) from None
    else:
        assert dataset.prefix is not None  # TrainingDataset holds exactly one of the two
        where = f"training.dataset.prefix {dataset.prefix}"
        try:
            uris = store.list_uris(dataset.prefix)
        except Exception as error:
            raise InputFetchFailed(f"{where}: {error}") from error
        captions = {uri.rsplit(".", 1)[0]: uri for uri in uris if uri.endswith(".txt")}
        pairs = []
        for uri in uris:
            stem, dot, suffix = uri.rpartition(".")
            if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES and stem in captions:
                pairs.append((uri, captions[stem]))
    if not pairs:
        raise InputRefused(f"{where}: no images with captions (an image needs a same-named .txt beside it)")
    if len(pairs) > MAX_DATASET_ITEMS:
        raise InputRefused(f"{where}: {len(pairs)} examples, more than {MAX_DATASET_ITEMS}")
    return pairs


def read_dataset(workspace: Workspace, dataset: TrainingDataset) -> list[tuple[Image.Image, str]]:
    pairs = dataset_pairs(workspace, dataset)
    examples = []
    for image_uri, caption in pairs:
        try:
            data = workspace.store.read_object(image_uri, MAX_IMAGE_BYTES)
            if dataset.prefix is not None:  # the caption is the .txt object's URI
                caption = workspace.store.read_object(caption, MAX_CAPTION_BYTES).decode("utf-8").strip()
        except Exception as error:
            raise InputFetchFailed(f"training.dataset: reading {image_uri}: {error}") from error
        examples.append((decode_image(data, f"training.dataset {image_uri}"), caption))
    return examples


def square(image: Image.Image, side: int) -> torch.Tensor:
    """The image resized so its short side is ``side``, centre-cropped, as CHW in [-1, 1]."""
    image = image.convert("RGB")
    scale = side / min(image.size)
    width, height = max(side, round(image.width * scale)), max(side, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(side, side, 3)
    return data.permute(2, 0, 1).float() / 127.5 - 1.0


# --- checkpoints --------------------------------------------------------------------------


def fingerprint(job: Generation, model_directory: str) -> str:
    """Checkpoints of another input (a job re-created under the same name) are never resumed."""
    identity = {"input": job.input.model_dump(mode="json"), "model": Path(model_directory).name}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def latest_checkpoint(workspace: Workspace, identity: str) -> tuple[int, dict[str, bytes], list[Checkpoint]]:
    """The newest complete checkpoint of this input: its step and files, and every complete
    checkpoint up to it; (0, {}, []) when there is none."""
    store = workspace.store
    try:
        uris = store.list_uris(workspace.output_uri + CHECKPOINTS)
    except Exception as error:
        log.warning("listing checkpoints under %s: %s", workspace.output_uri, error)
        return 0, {}, []
    found: list[tuple[int, str, bytes, dict]] = []
    for uri in uris:
        match = STEP_FOLDER.search(uri)
        if not match:
            continue
        try:
            data = store.read(uri, MAX_CAPTION_BYTES)
            manifest = json.loads(data)
        except Exception as error:
            log.warning("checkpoint %s unreadable: %s", uri, error)
            continue
        if manifest.get("fingerprint") == identity and manifest.get("step") == int(match.group(1)):
            found.append((manifest["step"], uri, data, manifest))
    found.sort(key=lambda entry: entry[0])
    for index in range(len(found) - 1, -1, -1):
        step, uri, _, manifest = found[index]
        folder = uri[: -len(MANIFEST)]
        try:
            files = {name: store.read(folder + name, MAX_CHECKPOINT_BYTES) for name in manifest["files"]}
        except Exception as error:
            log.warning("checkpoint %s incomplete: %s", folder, error)
            continue
        if all(hashlib.sha256(files[n]).hexdigest() == manifest["files"][n]["sha256"] for n in files):
            listed = [
                Checkpoint(step=s, url=u[: -len(MANIFEST)], sha256=hashlib.sha256(d).hexdigest())
                for s, u, d, _ in found[: index + 1]
            ]
            return step, files, listed
        log.warning("checkpoint %s does not match its checkpoint.json; skipped", folder)
    return 0, {}, []


# --- the run ------------------------------------------------------------------------------


class Trainer:
    def __init__(self, directory: str, device: str, job: Generation, on_step: StepHook) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        assert job.input.training is not None and job.workspace is not None
        self.settings: TrainingInput = job.input.training
        self.job, self.on_step, self.device, self.directory = job, on_step, device, directory
        self.workspace: Workspace = job.workspace
        settings = self.settings
        examples = read_dataset(self.workspace, settings.dataset)  # before any model work

        cuda = device.startswith("cuda")
        dtypes = {MixedPrecision.FP16: torch.float16, MixedPrecision.BF16: torch.bfloat16}
        # Mixed precision is for GPUs; on a CPU everything stays fp32.
        self.dtype = dtypes.get(settings.mixed_precision, torch.float32) if cuda else torch.float32
        local = True  # nothing is downloaded
        self.tokenizer = CLIPTokenizer.from_pretrained(
            directory, subfolder="tokenizer", local_files_only=local
        )
        self.noise_scheduler = DDPMScheduler.from_pretrained(
            directory, subfolder="scheduler", local_files_only=local
        )
        self.vae = AutoencoderKL.from_pretrained(directory, subfolder="vae", local_files_only=local)
        self.text_encoder: Any = CLIPTextModel.from_pretrained(
            directory, subfolder="text_encoder", local_files_only=local
        )
        self.unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet", local_files_only=local)
        frozen: list[Any] = [self.vae, self.text_encoder, self.unet]
        for model in frozen:
            model.requires_grad_(False)
            model.to(device, dtype=self.dtype)

        names = [name for name, _ in self.unet.named_modules()]
        missing = [
            t for t in settings.target_modules if not any(n == t or n.endswith("." + t) for n in names)
        ]
        if missing:
            raise InputRefused(f"training.targetModules: {', '.join(missing)} match no module of the UNet")
        self.unet.add_adapter(
            LoraConfig(
                r=settings.rank,
                lora_alpha=settings.lora_alpha,
                init_lora_weights="gaussian",
                target_modules=list(settings.target_modules),
            )
        )
        self.trained: list[torch.nn.Module] = [self.unet]
        if settings.train_text_encoder:
            self.text_encoder.add_adapter(
                LoraConfig(
                    r=settings.rank,
                    lora_alpha=settings.lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=TEXT_ENCODER_MODULES,
                )
            )
            self.trained.append(self.text_encoder)
        # peft's "gaussian" init, drawn from the seed rather than torch's global generator, so
        # every attempt of a job starts from the same adapters.
        initial = torch.Generator().manual_seed(job.seed)
        self.parameters: list[torch.nn.Parameter] = []
        for model in self.trained:
            for name, parameter in model.named_parameters():
                if not parameter.requires_grad:
                    continue
                parameter.data = parameter.data.float()  # LoRA weights train in fp32
                if ".lora_A." in name:
                    parameter.data.copy_(torch.randn(parameter.shape, generator=initial) / settings.rank)
                elif ".lora_B." in name:
                    parameter.data.zero_()
                self.parameters.append(parameter)

        self.examples = [
            Example(
                pixels=square(image, settings.resolution),
                input_ids=self.tokenizer(
                    caption,
                    padding="max_length",
                    max_length=self.tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids[0],
            )
            for image, caption in examples
        ]
        self.batches_per_epoch = math.ceil(len(self.examples) / settings.batch_size)
        steps_per_epoch = math.ceil(self.batches_per_epoch / settings.gradient_accumulation_steps)
        self.total = settings.max_steps or steps_per_epoch * (settings.epochs or 1)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=settings.learning_rate)
        self.lr_scheduler = self._lr_scheduler()
        self.random = torch.Generator().manual_seed(job.seed)
        self.identity = fingerprint(job, directory)

    def _lr_scheduler(self) -> Any:
        from diffusers.optimization import get_scheduler

        name = self.settings.scheduler.value
        if name == "constant" and self.settings.warmup_steps:
            name = "constant_with_warmup"
        return get_scheduler(
            name,
            optimizer=self.optimizer,
            num_warmup_steps=self.settings.warmup_steps,
            num_training_steps=self.total,
        )

    # --- state ----------------------------------------------------------------------------

    def lora_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(self.unet).items()}
        if self.settings.train_text_encoder:
            state |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(self.text_encoder).items()}
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

    def save_checkpoint(self, progress: Progress) -> Checkpoint:
        from safetensors.torch import save

        state = io.BytesIO()
        torch.save(
            {
                "step": progress.step,
                "smoothed_loss": progress.smoothed_loss,
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "random": self.random.get_state(),
            },
            state,
        )
        files = {CHECKPOINT_WEIGHTS: save(self.lora_state()), STATE: state.getvalue()}
        folder = f"{self.workspace.output_uri}{CHECKPOINTS}step-{progress.step}/"
        manifest = {
            "step": progress.step,
            "fingerprint": self.identity,
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)}
                for name, data in files.items()
            },
        }
        for name, data in files.items():
            self.workspace.store.put(folder, name, data, "application/octet-stream")
        written = self.workspace.store.put(
            folder, MANIFEST, json.dumps(manifest, indent=1).encode(), "application/json"
        )
        return Checkpoint(step=progress.step, url=folder, sha256=written.sha256)

    def resume(self) -> Progress:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load

        step, files, checkpoints = latest_checkpoint(self.workspace, self.identity)
        if not step:
            return Progress()
        weights = load(files[CHECKPOINT_WEIGHTS])
        for prefix, model in (("unet.", self.unet), ("text_encoder.", self.text_encoder)):
            part = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            if part:
                set_peft_model_state_dict(model, part)
        state = torch.load(io.BytesIO(files[STATE]), weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.random.set_state(state["random"])
        log.info("resuming %s from step %d", self.workspace.output_uri, step)
        return Progress(
            step=state["step"],
            smoothed_loss=state["smoothed_loss"],
            resumed_from=step,
            checkpoints=checkpoints,
        )

    # --- training -------------------------------------------------------------------------

    def batch(self, micro_batch: int) -> list[Example]:
        """The examples of a micro-batch: each epoch shuffles by the seed and the epoch alone."""
        epoch, index = divmod(micro_batch, self.batches_per_epoch)
        order = torch.randperm(
            len(self.examples), generator=torch.Generator().manual_seed(self.job.seed + epoch)
        )
        size = self.settings.batch_size
        return [self.examples[int(i)] for i in order[index * size : (index + 1) * size]]

    def micro_step(self, examples: list[Example]) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        pixels = torch.stack([e.pixels for e in examples]).to(device, dtype=dtype)
        input_ids = torch.stack([e.input_ids for e in examples]).to(device)
        autocast = "cuda" if device.startswith("cuda") else "cpu"
        with torch.autocast(device_type=autocast, dtype=dtype, enabled=dtype != torch.float32):
            with torch.no_grad():
                distribution = self.vae.encode(pixels).latent_dist
            noise_shape = distribution.mean.shape
            sample = torch.randn(noise_shape, generator=self.random).to(device, dtype=dtype)
            latents = (distribution.mean + distribution.std * sample) * self.vae.config.scaling_factor
            noise = torch.randn(noise_shape, generator=self.random).to(device, dtype=dtype)
            timesteps = torch.randint(
                0,
                self.noise_scheduler.config.num_train_timesteps,
                (len(examples),),
                generator=self.random,
            ).to(device)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            encoded = self.text_encoder(input_ids, return_dict=False)[0]
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            predicted = self.unet(noisy, timesteps, encoded, return_dict=False)[0]
        return torch.nn.functional.mse_loss(predicted.float(), target.float())

    def train(self) -> Outputs:
        settings = self.settings
        progress = self.resume()
        accumulation = settings.gradient_accumulation_steps
        started, first_step = time.monotonic(), progress.step
        reported = 0.0
        for model in self.trained:
            model.train()
        while progress.step < self.total:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for part in range(accumulation):
                loss = self.micro_step(self.batch(progress.step * accumulation + part))
                (loss / accumulation).backward()
                loss_sum += loss.item()
            loss_value = loss_sum / accumulation
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"training loss became {loss_value} at step {progress.step + 1}; checkpoints so far "
                    f"are kept under {self.workspace.output_uri}{CHECKPOINTS} (try a lower learningRate)"
                )
            torch.nn.utils.clip_grad_norm_(self.parameters, MAX_GRAD_NORM)
            learning_rate = self.lr_scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.lr_scheduler.step()
            progress.step += 1
            previous = progress.smoothed_loss
            progress.smoothed_loss = (
                loss_value if previous is None else SMOOTHING * previous + (1 - SMOOTHING) * loss_value
            )
            wrote = progress.step % settings.checkpoint_every_steps == 0
            if wrote:
                progress.checkpoints.append(self.save_checkpoint(progress))
            if settings.sample_every_steps and progress.step % settings.sample_every_steps == 0:
                progress.samples += self.draw_samples(progress.step)
                wrote = True
            now = time.monotonic()
            edge = progress.step in (first_step + 1, self.total)
            if not (wrote or edge or now - reported >= REPORT_SECONDS):
                continue
            reported = now
            rate = (progress.step - first_step) / max(now - started, 1e-9)
            self.on_step(
                progress.step,
                self.total,
                training=TrainingProgress(
                    epoch=(progress.step * accumulation - 1) // self.batches_per_epoch + 1,
                    loss=loss_value,
                    smoothed_loss=progress.smoothed_loss,
                    learning_rate=learning_rate,
                    steps_per_second=rate,
                    eta_seconds=(self.total - progress.step) / rate if rate > 0 else None,
                    resumed_from_step=progress.resumed_from,
                    checkpoints=progress.checkpoints[-REPORTED_CHECKPOINTS:],
                    samples=progress.samples[-REPORTED_SAMPLES:],
                ),
            )  # raises Cancelled: the checkpoints written stay
        return Outputs(
            files=[OutputFile(WEIGHTS, self.final_weights(), SAFETENSORS)],
            written=progress.samples,
            summary=f"LoRA weights after {self.total} steps"
            + (f" (resumed from step {progress.resumed_from})" if progress.resumed_from else ""),
        )

    def final_weights(self) -> bytes:
        """The adapters in diffusers' LoRA format, which ``load_lora_weights`` reads."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        def layers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
            return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

        def metadata(model: Any) -> dict[str, Any]:
            return dict(model.peft_config["default"].to_dict())

        encoder = self.settings.train_text_encoder
        with tempfile.TemporaryDirectory(prefix="lora-") as folder:
            StableDiffusionPipeline.save_lora_weights(
                save_directory=folder,
                unet_lora_layers=layers(self.unet),
                text_encoder_lora_layers=layers(self.text_encoder) if encoder else None,
                unet_lora_adapter_metadata=metadata(self.unet),
                text_encoder_lora_adapter_metadata=metadata(self.text_encoder) if encoder else None,
                safe_serialization=True,
            )
            return (Path(folder) / WEIGHTS).read_bytes()

    def draw_samples(self, step: int) -> list[Artifact]:
        """Each sample prompt drawn with the adapters as they are now, written straight away."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        spec = self.job.input
        side = self.settings.resolution
        pipeline: Any = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        for model in self.trained:
            model.eval()
        written = []
        try:
            for index, prompt in enumerate(self.settings.sample_prompts):
                with torch.inference_mode():
                    image = pipeline(
                        prompt=prompt,
                        width=side,
                        height=side,
                        num_inference_steps=spec.steps,
                        guidance_scale=spec.guidance_scale,
                        generator=torch.Generator().manual_seed(self.job.seed + index),
                    ).images[0]
                file = OutputFile(f"sample-{step}-{index}.png", encode_png(image), PNG, (side, side))
                check_output(file)
                written.append(self.workspace.store.put(self.workspace.output_uri, file.name, file.data, PNG))
        finally:
            for model in self.trained:
                model.train()
        return written


def train_lora(directory: str, device: str, job: Generation, on_step: StepHook) -> Outputs:
    if job.input.training is None or job.workspace is None:
        raise ValueError("a train run needs input.training and an output prefix")
    return Trainer(directory, device, job, on_step).train()
