"""Hostile melodies: headers that lie about the sample rate, the channels or the length, and
decompression bombs. Each is refused from its header, or after decoding at most the allowed duration,
as a ValueError (a 422 naming `melody`) and without a large allocation."""

import base64
import io
import tracemalloc

import numpy as np
import pytest
import soundfile
import torch
from pydantic import ValidationError

from leap_ray.api.audio import DecodedAudio, decode_audio
from leap_ray.api.musicgen import MELODY_LIMITS, MusicGenRequest
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest, invalid_request_from
from tests.helpers import encoded, flac_silence, wav_bytes, with_total_samples

MUSICGEN = LIMITS.musicgen
SMALL_PEAK = 64 * 2**20  # far below what the hostile files used to cost (256 MB to 320 GB)


def rejection_and_peak(value: object) -> tuple[str, int]:
    """decode_audio's ValueError message, and the peak memory of the call in bytes (numpy reports its
    arrays to tracemalloc, so a huge allocation shows even when it fails)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as caught:
            decode_audio(value, MELODY_LIMITS)
        return str(caught.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def decoded_and_peak(value: object) -> tuple[DecodedAudio, int]:
    tracemalloc.start()
    try:
        return decode_audio(value, MELODY_LIMITS), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def melody_error(melody: object) -> InvalidRequest:
    if isinstance(melody, bytes):
        melody = base64.b64encode(melody).decode()
    with pytest.raises(ValidationError) as caught:
        MusicGenRequest(prompt="a", melody=melody)
    return invalid_request_from(caught.value.errors())


HOUR_OF_SILENCE = flac_silence(3600)
CLAIMS_2_36_FRAMES = with_total_samples(flac_silence(1.0), 2**36 - 1)
UNKNOWN_LENGTH_HOUR = with_total_samples(HOUR_OF_SILENCE, 0)
UNKNOWN_LENGTH_HOUR_8_CHANNELS = with_total_samples(flac_silence(3600, channels=8), 0)
NINE_CHANNELS = encoded(np.zeros((800, 9), dtype=np.int16), 8000, "WAV")
HOSTILE = [
    # (id, encoded melody, what the message says)
    ("wav-rate-2^31-1", wav_bytes(2**31 - 1), "sample rate of 2147483647 Hz"),
    ("wav-rate-1000003", wav_bytes(1_000_003, frames=1_000_003), "sample rate of 1000003 Hz"),
    ("wav-rate-4000", wav_bytes(4000), "sample rate of 4000 Hz"),
    ("flac-1-hour-of-silence", HOUR_OF_SILENCE, "is 3600.0 s long; the limit is 60 s"),
    ("flac-claims-2^36-1-frames", CLAIMS_2_36_FRAMES, "is 8589934.6 s long; the limit is 60 s"),
    ("flac-unknown-length-1-hour", UNKNOWN_LENGTH_HOUR, "is at least 61.0 s long; the limit is 60 s"),
    ("flac-unknown-length-1-hour-8-channels", UNKNOWN_LENGTH_HOUR_8_CHANNELS, "is at least 61.0 s long"),
    ("wav-9-channels", NINE_CHANNELS, "has 9 channels; the limit is 8"),
    ("flac-truncated-header", HOUR_OF_SILENCE[:30], "is not audio in a format we read"),
]


def test_the_hostile_files_say_what_they_claim():
    assert len(HOUR_OF_SILENCE) < 1_000_000  # a bomb: 89 KB that decoded to 250 MB
    assert soundfile.info(io.BytesIO(HOUR_OF_SILENCE)).frames == 3600 * 8000
    assert soundfile.info(io.BytesIO(CLAIMS_2_36_FRAMES)).frames == 2**36 - 1
    assert soundfile.info(io.BytesIO(UNKNOWN_LENGTH_HOUR)).frames == 2**63 - 1
    assert soundfile.info(io.BytesIO(wav_bytes(2**31 - 1))).samplerate == 2**31 - 1


@pytest.mark.parametrize(("melody", "says"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_melody_is_refused_without_a_large_allocation(melody, says):
    message, peak = rejection_and_peak(melody)
    assert says in message
    assert peak < SMALL_PEAK


@pytest.mark.parametrize(("melody", "says"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_melody_is_a_request_error_naming_melody(melody, says):
    error = melody_error(melody)
    assert error.param == "melody" and says in error.message


def test_a_wav_whose_data_chunk_claims_4_gb_decodes_only_what_is_there():
    # libsndfile bounds a WAV's data chunk by the bytes present, so this one is short, not a bomb.
    audio, peak = decoded_and_peak(wav_bytes(8000, frames=1600, data_size=0xFFFFFFFF))
    assert audio.waveform.shape == (1600,) and peak < SMALL_PEAK


def test_many_channels_are_mixed_to_mono_block_by_block():
    seconds, rate = MUSICGEN.max_melody_s - 1, 8000
    audio, peak = decoded_and_peak(flac_silence(seconds, rate=rate, channels=8))
    mono_bytes = audio.waveform.nbytes
    assert audio.seconds == seconds
    assert peak < 3 * mono_bytes  # the 8-channel float32 file would be 8 times mono


def test_a_valid_stereo_wav_decodes_to_the_mean_of_its_channels():
    t = np.arange(5 * 44_100) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 660 * t)], axis=1)
    wav = encoded(stereo, 44_100, "WAV")
    audio = decode_audio(wav, MELODY_LIMITS)
    expected = soundfile.read(io.BytesIO(wav), dtype="float32")[0].mean(axis=1)
    assert audio.sample_rate == 44_100 and audio.waveform.dtype == np.float32
    np.testing.assert_array_equal(audio.waveform, expected)


HANDLE_FORMS = [
    ("pair-rate-2^31-1", (np.zeros(1600, dtype=np.float32), 2**31 - 1), "sample rate of 2147483647 Hz"),
    ("pair-rate-200k", (torch.zeros(2, 1600), 200_000), "sample rate of 200000 Hz"),
    ("pair-9-channels", (np.zeros((9, 1600), dtype=np.float32), 16_000), "has 9 channels"),
    ("pair-61-seconds", (np.zeros(61 * 8000, dtype=np.float32), 8000), "is 61.0 s long"),
    ("pair-not-numbers", (np.array([0.0, {}], dtype=object), 16_000), "not numbers"),
    ("decoded-rate-2^31-1", DecodedAudio(np.zeros(1600, dtype=np.float32), 2**31 - 1), "sample rate"),
    ("decoded-rate-0", DecodedAudio(np.zeros(1600, dtype=np.float32), 0), "sample rate of 0 Hz"),
    ("decoded-rate-float", DecodedAudio(np.zeros(1600, dtype=np.float32), 16_000.0), "whole number"),
    ("decoded-stereo", DecodedAudio(np.zeros((2, 1600), dtype=np.float32), 16_000), "must be mono"),
]


@pytest.mark.parametrize(("melody", "says"), [c[1:] for c in HANDLE_FORMS], ids=[c[0] for c in HANDLE_FORMS])
def test_the_handle_forms_have_the_same_bounds(melody, says):
    message, _ = rejection_and_peak(melody)
    assert says in message
    assert melody_error(melody).param == "melody"


@pytest.mark.parametrize("rate", [8000, 44_100, 192_000])
def test_the_bounds_of_the_sample_rate_are_allowed(rate):
    assert decode_audio(wav_bytes(rate), MELODY_LIMITS).sample_rate == rate
    assert decode_audio((np.zeros(160, dtype=np.float32), rate), MELODY_LIMITS).sample_rate == rate
