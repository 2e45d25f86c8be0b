"""A tiny random-weight SDXL refiner with the layout of stabilityai/stable-diffusion-xl-refiner-1.0,
built offline in about a second, to hand the tiny base's latents to (`denoising_start`).

Like the real refiner it has only the second text encoder (OpenCLIP bigG there; here the tiny base's
second encoder and tokenizer, weights included), so its UNet attends to that encoder's width alone,
and it is conditioned on an aesthetic score: 5 micro-conditioning numbers (original size, crop corner,
aesthetic score) instead of the base's 6, hence `projection_class_embeddings_input_dim` = 5 x the time
embedding width + the pooled width (the real one's 2560 = 5 x 256 + 1280). Its VAE is the tiny base's,
config and weights, as the real refiner shares the base's VAE, so latents pass from one to the other.
The UNet's weights come from another seed than the base's, so refining visibly changes an image.
"""

from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

from leap_ray.tiny.sdxl import SDXL_SCHEDULER, TINY, build_sdxl, sdxl_unet

REFINER_TIME_IDS = 5  # original height, width, crop top, left, aesthetic score
REFINER_UNET_SEED = 1  # the base's networks come from seed 0


def build_sdxl_refiner() -> StableDiffusionXLImg2ImgPipeline:
    """Builds the refiner in memory with random weights; the same weights on every call."""
    base = build_sdxl(TINY)
    torch.manual_seed(REFINER_UNET_SEED)
    second_encoder_width = TINY.text_encoders[1][0]
    unet = sdxl_unet(TINY, cross_attention_dim=second_encoder_width, time_ids=REFINER_TIME_IDS)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def write_tiny_sdxl_refiner(directory: Path) -> Path:
    """Writes the refiner in diffusers' folder layout and returns the folder."""
    build_sdxl_refiner().save_pretrained(directory, safe_serialization=True)
    return directory
