"""The streamed pieces of a track, joined, are the whole-track EnCodec decode (exact length, SNR within
the stated tolerance) however the codes arrive; a piece never holds samples that more codes would
still change; and the check fails with less look-ahead or context than the decoder needs."""

import numpy as np
import pytest
import torch
from transformers import MusicgenForConditionalGeneration

from leap_ray.engines.musicgen_stream import (
    LOOKAHEAD_FRAMES,
    SNR_TOLERANCE_DB,
    AudioStream,
    snr_db,
)

SAMPLES_PER_FRAME = 640  # the tiny model's EnCodec: 32 kHz at 50 frames per second, as the real one
FRAMES = 120
# Random weights forget within the default context, so the stream should be the whole decode to float
# rounding (measured 122 dB): a floor far above the tolerance, so an off-by-one frame shows.
FLOAT_ROUNDING_DB = 100.0


@pytest.fixture(scope="module")
def model(tiny_models) -> MusicgenForConditionalGeneration:
    return MusicgenForConditionalGeneration.from_pretrained(tiny_models["musicgen"]).eval()


@pytest.fixture(scope="module")
def decode(model):
    """The engine's decode: (codebooks, frames) codes -> the mono waveform."""

    def run(codes: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            output = model.audio_encoder.decode(codes[None, None], audio_scales=[None])
        return output.audio_values[0, 0].numpy()

    return run


@pytest.fixture(scope="module")
def codes(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (model.decoder.config.num_codebooks, FRAMES)
    return torch.randint(0, model.audio_encoder.config.codebook_size, shape, generator=generator)


def stream(audio_stream: AudioStream, codes: torch.Tensor, every: int) -> list[np.ndarray]:
    """Pushes the codes as they would grow, `every` frames at a time, then finishes."""
    pieces = [audio_stream.push(codes[:, :known]) for known in range(every, codes.shape[-1], every)]
    return [*pieces, audio_stream.finish(codes)]


@pytest.mark.parametrize("every", [1, 7, 25, FRAMES], ids=["every-frame", "every-7", "every-25", "one-push"])
def test_the_joined_pieces_are_the_whole_decode(decode, codes, every):
    whole = decode(codes)
    joined = np.concatenate(stream(AudioStream(decode, SAMPLES_PER_FRAME), codes, every))
    assert joined.dtype == np.float32
    assert joined.shape == whole.shape == (FRAMES * SAMPLES_PER_FRAME,)
    assert snr_db(whole, joined) >= SNR_TOLERANCE_DB
    assert snr_db(whole, joined) >= FLOAT_ROUNDING_DB


def test_a_track_shorter_than_the_context_streams_as_its_whole_decode(decode, codes):
    short = codes[:, :30]  # under the default 50 frames of context: every segment starts at frame 0
    joined = np.concatenate(stream(AudioStream(decode, SAMPLES_PER_FRAME), short, 4))
    assert joined.shape == (30 * SAMPLES_PER_FRAME,)
    assert snr_db(decode(short), joined) >= FLOAT_ROUNDING_DB


def test_a_track_shorter_than_the_lookahead_comes_whole_at_finish(decode, codes):
    audio_stream = AudioStream(decode, SAMPLES_PER_FRAME)
    assert [len(audio_stream.push(codes[:, :known])) for known in (1, 2, 4)] == [0, 0, 0]
    np.testing.assert_array_equal(audio_stream.finish(codes[:, :4]), decode(codes[:, :4]))
    assert len(audio_stream.finish(codes[:, :4])) == 0


def test_a_push_holds_only_samples_that_more_codes_leave_unchanged(decode, codes):
    """Each piece, at its place, equals the whole decode (to rounding) though it was cut before the
    track went on; the frame right after it, decoded from the same codes, still differs."""
    audio_stream = AudioStream(decode, SAMPLES_PER_FRAME)
    whole = decode(codes)
    for known in range(25, FRAMES, 25):
        start = audio_stream.emitted_samples
        piece = audio_stream.push(codes[:, :known])
        assert audio_stream.emitted_frames == known - LOOKAHEAD_FRAMES
        assert start + len(piece) == audio_stream.emitted_samples
        assert snr_db(whole[start : start + len(piece)], piece) >= FLOAT_ROUNDING_DB
        held_back = slice(audio_stream.emitted_samples, audio_stream.emitted_samples + SAMPLES_PER_FRAME)
        assert snr_db(whole[held_back], decode(codes[:, :known])[held_back]) < FLOAT_ROUNDING_DB


@pytest.mark.parametrize(
    ("settings", "floor"),
    [
        ({"lookahead_frames": 0}, SNR_TOLERANCE_DB),  # measured 24 dB
        ({"lookahead_frames": LOOKAHEAD_FRAMES - 1}, FLOAT_ROUNDING_DB),  # 41 dB
        ({"context_frames": 0}, SNR_TOLERANCE_DB),  # 25 dB: the LSTM restarts from zeros each frame
    ],
    ids=["no-lookahead", "lookahead-one-short", "no-context"],
)
def test_the_check_fails_with_less_than_the_decoders_reach(decode, codes, settings, floor):
    whole = decode(codes)
    joined = np.concatenate(stream(AudioStream(decode, SAMPLES_PER_FRAME, **settings), codes, 1))
    assert joined.shape == whole.shape
    assert snr_db(whole, joined) < floor


def test_codes_that_shrink_are_refused(decode, codes):
    audio_stream = AudioStream(decode, SAMPLES_PER_FRAME)
    audio_stream.push(codes[:, :20])
    with pytest.raises(ValueError, match="pass all of them"):
        audio_stream.push(codes[:, 10:20])
