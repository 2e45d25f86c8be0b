"""The Python API: an application handle, with request models or dicts, tensors and callables."""

import io

import numpy as np
import pytest
import soundfile
import torch
from diffusers import StableDiffusionXLPipeline
from ray import serve

from leap_ray.api.musicgen import MusicGenOutput
from leap_ray.api.progress import AudioDelta, AudioProgress
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest
from leap_ray.engines.contract import generate
from leap_ray.engines.musicgen_stream import SNR_TOLERANCE_DB, snr_db
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.errors import InvalidRequest
from tests.helpers import SMALL, pixels

from .conftest import APP


@pytest.fixture(scope="module")
def handle(graph):
    return serve.get_app_handle(APP)


def test_a_request_model_through_the_handle(handle):
    output = handle.sdxl.remote(SDXLRequest(prompt="a", seed=3, **SMALL)).result()
    assert isinstance(output, SDXLOutput)
    assert output.seeds == [3] and output.format == "png"


def zero_last_step(pipeline, step, timestep, tensors):
    # Runs in the model replica; it must see only its own request's rows.
    assert tensors["latents"].shape == (1, 4, 8, 8), tensors["latents"].shape
    assert tensors["prompt_embeds"].shape[0] == 2  # its unconditional and conditional rows
    if step == pipeline.num_timesteps - 1:
        return {"latents": torch.zeros_like(tensors["latents"])}
    return {}


def test_tensors_and_a_callback_through_the_handle_match_an_in_process_run(handle, tiny_models):
    reference = StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"])
    embeds, negative, pooled, negative_pooled = reference.encode_prompt(
        prompt="a lighthouse", do_classifier_free_guidance=True, device="cpu"
    )
    request = {
        "prompt_embeds": embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
        "callback_on_step_end": zero_last_step,
        "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"],
        "seed": 8,
        **SMALL,
    }
    others = [handle.sdxl.remote({"prompt": f"other {i}", "seed": i, **SMALL}) for i in range(3)]
    output = handle.sdxl.remote(request).result()
    assert all(isinstance(other.result(), SDXLOutput) for other in others)
    (expected,) = generate(SDXLEngine(str(tiny_models["sdxl"])), [SDXLRequest(**request)])
    expected_pixels = (np.clip(expected.images[0], 0, 1) * 255).round()
    assert np.abs(pixels(output.images[0]) - expected_pixels).max() <= 1


def test_music_with_an_array_melody_through_the_handle(handle):
    melody = (np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000).astype(np.float32), 16_000)
    output = handle.musicgen.remote({"prompt": "a", "duration": 1, "seed": 2, "melody": melody}).result()
    assert isinstance(output, MusicGenOutput)
    assert output.sample_rate == 32_000 and output.duration == 1.0


def test_a_track_streams_through_the_handle_as_it_is_generated(handle):
    events = list(
        handle.options(stream=True).musicgen_stream.remote({"prompt": "a", "duration": 2, "seed": 5})
    )
    *progress, output = events
    pieces = [event for event in progress if isinstance(event, AudioDelta)]
    assert [event.seconds for event in progress if isinstance(event, AudioProgress)] == [1.0, 2.0]
    assert isinstance(output, MusicGenOutput) and len(pieces) >= 4
    joined = np.concatenate([np.frombuffer(piece.pcm, dtype="<i2") for piece in pieces])
    final, _ = soundfile.read(io.BytesIO(output.audio), dtype="int16")
    assert joined.shape == final.shape == (64_000,)
    assert snr_db(final.astype(np.float64), joined.astype(np.float64)) >= SNR_TOLERANCE_DB


def test_invalid_input_through_the_handle_raises_naming_the_field(handle):
    with pytest.raises(InvalidRequest) as caught:
        handle.sdxl.remote({"prompt": "a", "width": 100}).result()
    assert caught.value.param == "width"
