"""Tiny random-weight LoRA adapters for the tiny SDXL's UNet, built offline in about a second, in the
file layout `StableDiffusionXLPipeline.save_lora_weights` writes (and `load_lora_weights` reads).

A freshly made LoRA changes nothing (its up projection B starts at zero), so the weights are drawn
here from their own seeded generator, independent of peft's initialisation: A ~ N(0, 1/fan_in) and
B ~ N(0, STRENGTH²/rank), so that each layer's update B·A is a fixed fraction of a typical weight and
a scale-1.0 adapter changes the UNet's output by about 15%: visibly, without blowing it up.
Different seeds give different adapters, to stack them (`set_adapters`).
"""

from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict

from leap_ray.tiny.sdxl import build_sdxl

RANK = 4
STRENGTH = 0.25  # B's size relative to A's; 0.25 moves the UNet's output by 13-15% at scale 1.0
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, as usual for SDXL


def build_sdxl_lora(seed: int = 0) -> dict[str, torch.Tensor]:
    """The adapter's weights (in peft's naming) for the tiny SDXL's UNet; the same for the same seed."""
    unet = build_sdxl().unet
    unet.add_adapter(
        LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGET_MODULES, init_lora_weights=False)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(unet.named_modules(), key=lambda named: named[0]):
            if isinstance(layer, LoraLayer):
                down = layer.lora_A["default"].weight
                up = layer.lora_B["default"].weight
                down.copy_(torch.randn(down.shape, generator=generator) / down.shape[1] ** 0.5)
                up.copy_(torch.randn(up.shape, generator=generator) * STRENGTH / RANK**0.5)
    return get_peft_model_state_dict(unet)


def write_tiny_sdxl_lora(directory: Path, seed: int = 0) -> Path:
    """Writes the adapter as `pytorch_lora_weights.safetensors` into `directory` and returns it."""
    StableDiffusionXLPipeline.save_lora_weights(
        directory, unet_lora_layers=build_sdxl_lora(seed), safe_serialization=True
    )
    return directory


def write_tiny_sdxl_lora_2(directory: Path) -> Path:
    """A second, different adapter (seed 1), to stack on the first."""
    return write_tiny_sdxl_lora(directory, seed=1)
