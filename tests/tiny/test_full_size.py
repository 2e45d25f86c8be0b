"""The full-size benchmark models have the real checkpoints' architecture: counted on the meta device
(no memory, no time) against the published parameter counts."""

import torch

from leap_ray.tiny.musicgen import MELODY, build_musicgen
from leap_ray.tiny.sdxl import BASE_1_0, sdxl_modules


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_sdxl_base_has_the_real_parameter_counts():
    with torch.device("meta"):
        modules = sdxl_modules(BASE_1_0)
    # stabilityai/stable-diffusion-xl-base-1.0's safetensors, per component
    assert {name: count(module) for name, module in modules.items()} == {
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
        "unet": 2_567_463_684,
        "vae": 83_653_863,
    }


def test_musicgen_melody_is_the_1_5_billion_parameter_model():
    with torch.device("meta"):
        model, _ = build_musicgen(MELODY, melody=True)
    assert 1.4e9 < count(model) < 1.7e9
    assert model.config.audio_encoder.frame_rate == 50 and model.config.audio_encoder.num_quantizers == 4
    assert count(model.text_encoder) > 100e6  # T5-base
