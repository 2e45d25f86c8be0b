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


@pytest.fixture(scope="module")
def lora_sources(tiny_models) -> dict[str, str]:
    return {"ink": str(tiny_models["sdxl-lora"]), "paper": str(tiny_models["sdxl-lora-2"])}


@pytest.fixture(scope="module")
def lora_reference(tiny_models, lora_sources) -> StableDiffusionXLPipeline:
    """diffusers' pipeline on the tiny model with both tiny adapters loaded."""
    pipeline = reference_pipeline(StableDiffusionXLPipeline, tiny_models["sdxl"])
    for name, source in lora_sources.items():
        pipeline.load_lora_weights(source, adapter_name=name)
    return pipeline
