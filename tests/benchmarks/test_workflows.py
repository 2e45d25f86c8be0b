"""The workflows benchmark's measurements run on the tiny models (its numbers are the README's)."""

import pytest

from benchmarks.workflows import adapter_rows, img2img_rows, refiner_rows
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine

WORK = {"prompt": "a", "height": 64, "width": 64, "num_inference_steps": 4}  # strength 0.3 keeps 1


@pytest.mark.integration  # three engines and a dozen timed batches: about 5 s, the benchmarks' tier
def test_each_section_measures_and_counts_a_unet_call_per_adapter_set_and_step(tiny_models):
    sources = {"ink": str(tiny_models["sdxl-lora"]), "paper": str(tiny_models["sdxl-lora-2"])}
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras=sources)
    adapters = adapter_rows(engine, WORK, repeats=1)
    per_row = [row["unet_calls"] for row in adapters if row["acting"] == "per row"]
    per_set = [row["unet_calls"] for row in adapters if row["acting"] == "per set"]
    assert (per_row, per_set) == ([4, 4, 4, 4], [4, 4, 8, 16])
    assert all(row["seconds"] > 0 for row in adapters)
    assert next(row["workflow"] for row in img2img_rows(engine, WORK, repeats=1)) == "text2img"
    refiner = SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]))
    assert [row["vs_base"] > 0 for row in refiner_rows(engine, refiner, WORK, repeats=1)] == [True, True]
