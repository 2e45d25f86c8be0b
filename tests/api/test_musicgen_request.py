import base64
import io
import math

import numpy as np
import pytest
import soundfile
from pydantic import ValidationError

from leap_ray.api.audio import DecodedAudio
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.config import LIMITS
from leap_ray.errors import invalid_request_from


def wav_base64(seconds: float, rate: int = 16_000, channels: int = 1) -> str:
    buffer = io.BytesIO()
    samples = np.zeros((int(seconds * rate), channels), dtype=np.float32)
    soundfile.write(buffer, samples, rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def test_defaults_are_the_specs_and_audiocrafts():
    request = MusicGenRequest(prompt="lo-fi")
    assert request.duration == 10
    assert request.format == "wav"
    assert (request.guidance_scale, request.temperature, request.top_k, request.top_p) == (3.0, 1.0, 250, 0.0)


def test_sixty_seconds_is_allowed_and_is_3000_frames():
    assert MusicGenRequest(prompt="a", duration=60).frames(50) == 3000


@pytest.mark.parametrize("form", ["base64", "data-uri", "stereo", "array-pair"])
def test_melody_forms_decode_to_mono(form):
    value = {
        "base64": wav_base64(1.0),
        "data-uri": "data:audio/wav;base64," + wav_base64(1.0),
        "stereo": wav_base64(1.0, channels=2),
        "array-pair": (np.zeros((2, 16_000), dtype=np.float32), 16_000),
    }[form]
    melody = MusicGenRequest(prompt="a", melody=value).melody
    assert isinstance(melody, DecodedAudio)
    assert melody.waveform.shape == (16_000,) and melody.sample_rate == 16_000


def _param_of(body: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        MusicGenRequest.model_validate(body)
    return invalid_request_from(caught.value.errors()).param


TOO_LONG = wav_base64(LIMITS.musicgen.max_melody_s + 1, rate=LIMITS.musicgen.min_melody_sample_rate)
BAD_INPUTS = [
    ("missing-prompt", {}, "prompt"),
    ("prompt-too-long", {"prompt": "x" * (LIMITS.musicgen.max_prompt_chars + 1)}, "prompt"),
    ("prompt-list", {"prompt": ["a"]}, "prompt"),
    ("duration-0", {"prompt": "a", "duration": 0}, "duration"),
    ("duration-negative", {"prompt": "a", "duration": -1}, "duration"),
    ("duration-60.5", {"prompt": "a", "duration": 60.5}, "duration"),
    ("duration-61", {"prompt": "a", "duration": 61}, "duration"),
    ("duration-3600", {"prompt": "a", "duration": 3600}, "duration"),
    ("duration-nan", {"prompt": "a", "duration": math.nan}, "duration"),
    ("format-exe", {"prompt": "a", "format": "exe"}, "format"),
    ("melody-not-audio", {"prompt": "a", "melody": base64.b64encode(b"hello, world").decode()}, "melody"),
    ("melody-empty", {"prompt": "a", "melody": ""}, "melody"),
    ("melody-no-samples", {"prompt": "a", "melody": wav_base64(0.0)}, "melody"),
    ("melody-garbage-base64", {"prompt": "a", "melody": "%%% not base64 %%%"}, "melody"),
    ("melody-too-long", {"prompt": "a", "melody": TOO_LONG}, "melody"),
    ("melody-rate-below-8-khz", {"prompt": "a", "melody": wav_base64(1.0, rate=4000)}, "melody"),
    ("melody-9-channels", {"prompt": "a", "melody": wav_base64(0.1, rate=8000, channels=9)}, "melody"),
    ("melody-pair-rate-2^31-1", {"prompt": "a", "melody": (np.zeros(160), 2**31 - 1)}, "melody"),
    ("melody-wrong-type", {"prompt": "a", "melody": 42}, "melody"),
    ("melody-data-uri-not-base64", {"prompt": "a", "melody": "data:audio/wav,abc"}, "melody"),
    ("seed-negative", {"prompt": "a", "seed": -1}, "seed"),
    ("guidance-inf", {"prompt": "a", "guidance_scale": math.inf}, "guidance_scale"),
    ("temperature-negative", {"prompt": "a", "temperature": -0.1}, "temperature"),
    ("top-k-negative", {"prompt": "a", "top_k": -1}, "top_k"),
    ("top-p-above-1", {"prompt": "a", "top_p": 1.5}, "top_p"),
    ("unknown-field", {"prompt": "a", "bpm": 120}, "bpm"),
]


@pytest.mark.parametrize(("body", "param"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_naming_its_field(body, param):
    assert _param_of(body) == param
