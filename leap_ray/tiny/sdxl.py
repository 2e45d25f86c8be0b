"""A tiny random-weight SDXL pipeline with the real model's layout, built offline in about a second
(and, with BASE_1_0, one of the real model's size for speed measurements on a GPU).

It has everything `StableDiffusionXLPipeline.from_pretrained` expects: two CLIP text encoders of
different widths (the second with a projection, as SDXL's), two byte-level BPE tokenizers written in
code, a UNet with SDXL's `text_time` micro-conditioning, a VAE that downsamples by 8 and SDXL's
Euler scheduler settings. Its outputs are noise, but every parameter acts on them as on the real model.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@dataclass(frozen=True)
class SDXLArchitecture:
    """The shapes of an SDXL pipeline: per text encoder (width, layers, heads), then UNet and VAE."""

    text_encoders: tuple[tuple[int, int, int], tuple[int, int, int]]
    pooled_width: int
    vocab_size: int
    unet_channels: tuple[int, ...]
    unet_layers_per_block: int
    unet_head_dims: tuple[int, ...]
    unet_transformer_layers: tuple[int, ...]
    unet_sample_size: int  # latent side it was "trained" at: × 8 the native image size diffusers defaults to
    time_embed_width: int
    vae_channels: tuple[int, ...]
    vae_layers_per_block: int
    vae_groups: int


TINY = SDXLArchitecture(
    text_encoders=((32, 2, 4), (64, 2, 4)),
    pooled_width=32,
    vocab_size=1000,
    unet_channels=(32, 64),
    unet_layers_per_block=1,
    unet_head_dims=(2, 4),
    unet_transformer_layers=(1, 2),
    unet_sample_size=32,  # 256 px: what the playground offers by default, seconds per image on a CPU
    time_embed_width=8,
    vae_channels=(8, 16, 16, 16),  # four blocks: 8x downsampling, like SDXL's VAE
    vae_layers_per_block=1,
    vae_groups=8,
)
# stabilityai/stable-diffusion-xl-base-1.0: CLIP ViT-L and OpenCLIP bigG text encoders, a 2.6 B UNet.
BASE_1_0 = SDXLArchitecture(
    text_encoders=((768, 12, 12), (1280, 32, 20)),
    pooled_width=1280,
    vocab_size=49408,
    unet_channels=(320, 640, 1280),
    unet_layers_per_block=2,
    unet_head_dims=(5, 10, 20),
    unet_transformer_layers=(1, 2, 10),
    unet_sample_size=128,  # 1024 px, SDXL's native size
    time_embed_width=256,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    vae_groups=32,
)
MAX_TOKENS = 77
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


def _text_config(architecture: SDXLArchitecture, index: int) -> CLIPTextConfig:
    width, layers, heads = architecture.text_encoders[index]
    return CLIPTextConfig(
        vocab_size=architecture.vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=architecture.pooled_width,
        hidden_act="gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def sdxl_unet(
    architecture: SDXLArchitecture, cross_attention_dim: int | None = None, time_ids: int = 6
) -> UNet2DConditionModel:
    """SDXL's UNet with random weights. It attends to both text encoders' states (concatenated) unless
    `cross_attention_dim` says otherwise, and embeds `time_ids` micro-conditioning numbers (the base's
    6: original size, crop corner, target size) alongside the pooled text embedding."""
    blocks = len(architecture.unet_channels)
    if cross_attention_dim is None:
        cross_attention_dim = sum(width for width, _, _ in architecture.text_encoders)
    added_embedding_width = time_ids * architecture.time_embed_width + architecture.pooled_width
    return UNet2DConditionModel(
        sample_size=architecture.unet_sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=architecture.unet_channels,
        layers_per_block=architecture.unet_layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",),
        attention_head_dim=architecture.unet_head_dims,
        transformer_layers_per_block=architecture.unet_transformer_layers,
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=architecture.time_embed_width,
        projection_class_embeddings_input_dim=added_embedding_width,
        norm_num_groups=32,
    )


def sdxl_modules(architecture: SDXLArchitecture) -> dict[str, torch.nn.Module]:
    """The pipeline's networks with random weights (buildable on the meta device, to count them)."""
    text_encoder = CLIPTextModel(_text_config(architecture, 0))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(architecture, 1))
    unet = sdxl_unet(architecture)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=architecture.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(architecture.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(architecture.vae_channels),
        layers_per_block=architecture.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=architecture.vae_groups,
        sample_size=1024,
        scaling_factor=0.13025,
    )
    return {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "unet": unet, "vae": vae}


def build_sdxl(architecture: SDXLArchitecture = TINY) -> StableDiffusionXLPipeline:
    """Builds the pipeline in memory with random weights; the same weights on every call."""
    torch.manual_seed(0)
    return StableDiffusionXLPipeline(
        **sdxl_modules(architecture),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )


def write_tiny_sdxl(directory: Path, architecture: SDXLArchitecture = TINY) -> Path:
    """Writes the pipeline in diffusers' folder layout and returns the folder."""
    build_sdxl(architecture).save_pretrained(directory, safe_serialization=True)
    return directory
