"""Fixtures the engine tests share: the SDXL engine on the tiny model, and diffusers' own pipeline on it."""

import pytest
from diffusers import StableDiffusionXLPipeline

from leap_ray.engines.sdxl import SDXLEngine
from tests.helpers import reference_pipeline


@pytest.fixture(scope="module")
def engine(tiny_models) -> SDXLEngine:
    return SDXLEngine(str(tiny_models["sdxl"]))


@pytest.fixture(scope="module")
def reference(tiny_models) -> StableDiffusionXLPipeline:
    return reference_pipeline(StableDiffusionXLPipeline, tiny_models["sdxl"])
