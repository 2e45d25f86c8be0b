"""Fixtures the engine tests share: the SDXL engine on the tiny model, and diffusers' own pipeline on it."""

import pytest
from diffusers import StableDiffusionXLPipeline

from leap_ray.engines.sdxl import SDXLEngine


@pytest.fixture(scope="module")
def engine(tiny_models) -> SDXLEngine:
    return SDXLEngine(str(tiny_models["sdxl"]))


@pytest.fixture(scope="module")
def reference(tiny_models) -> StableDiffusionXLPipeline:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
