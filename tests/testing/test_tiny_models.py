import subprocess
import sys
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from leap_ray.testing.tiny_sdxl import write_tiny_sdxl


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(tmp_path):
    first = _files(write_tiny_sdxl(tmp_path / "a"))
    second = _files(write_tiny_sdxl(tmp_path / "b"))
    assert any(name.endswith(".safetensors") for name in first)
    assert first == second


def test_plain_diffusers_loads_and_runs_the_tiny_sdxl(tiny_models):
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"])
    assert pipeline.vae_scale_factor == 8  # the real SDXL VAE's downsampling
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.default_sample_size * pipeline.vae_scale_factor == 1024
    assert pipeline.text_encoder.config.hidden_size != pipeline.text_encoder_2.config.hidden_size
    images = pipeline(
        "a lighthouse",
        height=64,
        width=64,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 64, 64, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_cli_writes_the_tiny_models(tmp_path):
    subprocess.run([sys.executable, "-m", "leap_ray.cli", "tiny-models", str(tmp_path)], check=True)
    assert (tmp_path / "sdxl" / "model_index.json").exists()
    assert (tmp_path / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors").exists()
