"""Tiny random-weight models of real architectures, saved the way real ones are
(``save_pretrained``) so that the worker loads them through the same code. Nothing is
downloaded: configs, weights and tokenizer are all built here."""

from __future__ import annotations

import json
import string
from pathlib import Path

SAM_IMAGE_SIZE = 128  # the processor resizes the long side to this (1024 for real SAM)
LLAVA_IMAGE_SIZE = 32
LLAVA_PATCH = 8
WORDS = [*string.ascii_lowercase, "the", "a", "what", "is", "this", "image", "cat", "sea", "boat", "?", "."]


def save_tiny_pipeline(directory: Path) -> Path:
    """A Stable Diffusion pipeline (UNet, VAE, CLIP text encoder and tokenizer, DDIM)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    words = directory / "tokenizer-files"
    words.mkdir(parents=True)
    symbols = ["<|startoftext|>", "<|endoftext|>"]
    symbols += [*string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]
    (words / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    (words / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=77)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    target = directory / "tiny-sd-diffusers"
    pipeline.save_pretrained(target)
    return target


def save_tiny_sam(directory: Path) -> Path:
    """A SamModel (ViT image encoder, prompt encoder, mask decoder) with a SamProcessor."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SAM_IMAGE_SIZE,
        patch_size=16,
        output_channels=32,
        global_attn_indexes=[1],
        mlp_dim=64,
        window_size=4,
        num_pos_feats=16,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=32, image_size=SAM_IMAGE_SIZE, patch_size=16, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
    )
    config = SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    target = directory / "tiny-sam"
    SamModel(config).save_pretrained(target)
    side = {"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE}
    SamProcessor(SamImageProcessor(size={"longest_edge": SAM_IMAGE_SIZE}, pad_size=side)).save_pretrained(
        target
    )
    return target


def save_tiny_sam2(directory: Path) -> Path:
    """A Sam2Model (Hiera image encoder with its FPN neck, prompt encoder, mask decoder with
    high-resolution features) with a Sam2Processor, which resizes to a square."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    side = SAM_IMAGE_SIZE
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        image_size=[side, side],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 2],
        global_attention_blocks=[3],  # never a stage's first block, whose window pools by 2
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone.to_dict(),
        backbone_channel_list=[128, 64, 32, 16],
        # the patch embedding strides by 4, each stage after the first halves the map
        backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
        fpn_hidden_size=32,
    )
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=side, patch_size=16)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    config = Sam2Config(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    target = directory / "tiny-sam2"
    Sam2Model(config).save_pretrained(target)
    processor = Sam2ImageProcessor(
        size={"height": side, "width": side}, mask_size={"height": side // 4, "width": side // 4}
    )
    Sam2Processor(processor).save_pretrained(target)
    return target


def save_tiny_sam2_video(directory: Path) -> Path:
    """SAM 2 saved as SAM 2.1's published directories are: from the video model
    (model_type sam2_video, with its memory modules) with a Sam2VideoProcessor."""
    import torch
    from transformers import (
        Sam2Config,
        Sam2ImageProcessor,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    image = save_tiny_sam2(directory / "image-model")
    base = Sam2Config.from_pretrained(image)
    torch.manual_seed(0)
    config = Sam2VideoConfig(
        vision_config=base.vision_config.to_dict(),
        prompt_encoder_config=base.prompt_encoder_config.to_dict(),
        mask_decoder_config=base.mask_decoder_config.to_dict(),
        image_size=SAM_IMAGE_SIZE,
        memory_attention_hidden_size=32,  # the FPN's width
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[SAM_IMAGE_SIZE // 16] * 2,
        memory_encoder_hidden_size=32,
        memory_encoder_output_channels=16,
        mask_downsampler_embed_dim=32,
        memory_fuser_embed_dim=32,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    target = directory / "tiny-sam2-video"
    Sam2VideoModel(config).save_pretrained(target)
    side = {"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE}
    processor = Sam2ImageProcessor(
        size=side, mask_size={"height": SAM_IMAGE_SIZE // 4, "width": SAM_IMAGE_SIZE // 4}
    )
    Sam2VideoProcessor(processor, Sam2VideoVideoProcessor(size=side)).save_pretrained(target)
    return target


def save_tiny_llava(directory: Path) -> Path:
    """A LLaVA model (CLIP vision tower, projector, Llama language model) with its processor,
    a word-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    vocabulary = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<image>": 4}
    for word in WORDS:
        vocabulary.setdefault(word, len(vocabulary))
    words = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=LLAVA_IMAGE_SIZE,
        patch_size=LLAVA_PATCH,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(vocabulary),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=4,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    target = directory / "tiny-llava"
    LlavaForConditionalGeneration(config).save_pretrained(target)
    template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
    )
    LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": LLAVA_IMAGE_SIZE},
            crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
        ),
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        vision_feature_select_strategy="default",
        chat_template=template,
    ).save_pretrained(target)
    return target


def scene(width: int = 96, height: int = 64):
    """A real picture to work on: sky, sea, a sun and a boat."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (120, 180, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height * 2 // 3, width, height), fill=(20, 60, 140))
    draw.ellipse((width - 30, 6, width - 10, 26), fill=(250, 210, 40))
    draw.polygon(
        [(20, height * 2 // 3), (50, height * 2 // 3), (44, height * 2 // 3 + 8), (26, height * 2 // 3 + 8)],
        fill=(150, 40, 30),
    )
    return image


def save_tiny_lora(pipeline: Path, target: Path, seed: int) -> Path:
    """Random LoRA weights for the UNet of ``pipeline`` (a `save_tiny_pipeline` folder), saved
    as diffusers saves trained ones; different seeds give adapters that draw differently."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=target, unet_lora_layers=layers)
    return target / "pytorch_lora_weights.safetensors"
