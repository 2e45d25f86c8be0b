import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from transformers import (
    AutoTokenizer,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
)

from leap_ray.model_sources import TINY_BUILDERS, write_tiny


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(TINY_BUILDERS))
def test_two_builds_are_byte_identical(tmp_path, name):
    first = _files(write_tiny(name, tmp_path / "a"))
    second = _files(write_tiny(name, tmp_path / "b"))
    assert any(name.endswith(".safetensors") for name in first)
    assert first == second


def test_plain_diffusers_loads_and_runs_the_tiny_sdxl(tiny_models):
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"])
    assert pipeline.vae_scale_factor == 8  # the real SDXL VAE's downsampling
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.default_sample_size * pipeline.vae_scale_factor == 256  # small: fast on a CPU
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


@pytest.mark.parametrize(
    ("name", "model_class"),
    [
        ("musicgen", MusicgenForConditionalGeneration),
        ("musicgen-melody", MusicgenMelodyForConditionalGeneration),
    ],
)
def test_plain_transformers_loads_the_tiny_musicgen(tiny_models, name, model_class):
    model = model_class.from_pretrained(tiny_models[name])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[name])
    assert type(tokenizer).__name__ == "T5Tokenizer"
    assert model.config.audio_encoder.sampling_rate == 32_000
    assert model.config.audio_encoder.frame_rate == 50
    assert model.decoder.num_codebooks == model.config.audio_encoder.num_quantizers == 4
    inputs = tokenizer(["lo-fi music with a soothing melody"], return_tensors="pt")
    audio = model.generate(**inputs, max_new_tokens=50 + 3)  # 1 s: 50 frames plus the codebook delays
    assert audio.shape == (1, 1, 32_000)


@pytest.mark.slow  # a subprocess builds every tiny model
def test_cli_writes_the_tiny_models(tmp_path):
    subprocess.run([sys.executable, "-m", "leap_ray.cli", "tiny-models", str(tmp_path)], check=True)
    assert (tmp_path / "sdxl" / "model_index.json").exists()
    assert (tmp_path / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    for name in ("musicgen", "musicgen-melody"):
        assert (tmp_path / name / "model.safetensors").exists()
        assert (tmp_path / name / "tokenizer.json").exists()
