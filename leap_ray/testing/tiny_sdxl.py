"""A tiny random-weight SDXL pipeline with the real model's layout, built offline in about a second.

It has everything `StableDiffusionXLPipeline.from_pretrained` expects: two CLIP text encoders of
different widths (the second with a projection, as SDXL's), two byte-level BPE tokenizers written in
code, a UNet with SDXL's `text_time` micro-conditioning, a VAE that downsamples by 8 and SDXL's
Euler scheduler settings. Its outputs are noise, but every parameter acts on them as on the real model.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

VOCAB_SIZE = 1000
MAX_TOKENS = 77
TEXT_WIDTHS = (32, 64)
POOLED_WIDTH = 32
TIME_EMBED_WIDTH = 8
# SDXL's scheduler configuration (stabilityai/stable-diffusion-xl-base-1.0/scheduler).
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer in CLIP's format: every byte, alone and word-final, plus a few merges."""
    symbols = sorted(_bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("in", "g</w>")]
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in merges)]:
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def _text_config(width: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=POOLED_WIDTH,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """Builds the pipeline in memory; the same weights on every call."""
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(TEXT_WIDTHS[0]))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(TEXT_WIDTHS[1]))
    unet = UNet2DConditionModel(
        sample_size=128,  # latents of a 1024 px image, SDXL's native size
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=sum(TEXT_WIDTHS),
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_WIDTH,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_WIDTH + POOLED_WIDTH,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),  # four blocks: 8x downsampling, like SDXL's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=1024,
        scaling_factor=0.13025,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def write_tiny_sdxl(directory: Path) -> Path:
    """Writes the pipeline in diffusers' folder layout and returns the folder."""
    build_tiny_sdxl().save_pretrained(directory, safe_serialization=True)
    return directory
