import io

import numpy as np
import pytest
import soundfile
import torch

from leap_ray.api.audio import DecodedAudio, encode_audio
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.engines.contract import Engine, generate
from leap_ray.engines.musicgen import MusicGenEngine
from leap_ray.engines.musicgen_tracks import Track, delay_pattern, window_schedule
from leap_ray.engines.results import MusicGenResult
from leap_ray.errors import InvalidRequest, LeapRayError, ModelError

SAMPLE_RATE = 32_000


@pytest.fixture(scope="module")
def engine(tiny_models) -> MusicGenEngine:
    return MusicGenEngine(str(tiny_models["musicgen"]))


@pytest.fixture(scope="module")
def melody_engine(tiny_models) -> MusicGenEngine:
    return MusicGenEngine(str(tiny_models["musicgen-melody"]))


def generate_one(engine: MusicGenEngine, **fields) -> MusicGenResult:
    (result,) = generate(
        engine, [MusicGenRequest(**{"prompt": "lo-fi beat", "duration": 1, "seed": 3, **fields})]
    )
    assert isinstance(result, MusicGenResult)
    return result


def a_melody(frequency: float = 440.0, seconds: float = 3.0) -> DecodedAudio:
    t = np.arange(int(seconds * 44_100)) / 44_100
    return DecodedAudio(np.sin(2 * np.pi * frequency * t).astype(np.float32), 44_100)


def test_the_model_reports_32khz_at_50_frames_per_second(engine):
    spec = engine.spec()
    assert (spec.sample_rate, spec.frame_rate, spec.supports_melody) == (SAMPLE_RATE, 50, False)
    assert engine.codebooks == 4


@pytest.mark.parametrize("seconds", [1, 10, 30])  # 60 s (1,920,000 samples): the windows test below
def test_duration_gives_exact_sample_counts(engine, seconds):
    result = generate_one(engine, duration=seconds)
    assert result.sample_rate == SAMPLE_RATE
    assert result.waveform.shape == (seconds * SAMPLE_RATE,)
    assert np.isfinite(result.waveform).all() and np.abs(result.waveform).max() > 0


def test_windows_follow_audiocrafts_rule():
    # 30 s windows moving 18 s: the last 12 s of each window prompt the next.
    assert window_schedule(3000, 1500, 900) == [(0, 1500), (900, 1500), (1800, 1200)]
    assert window_schedule(2250, 1500, 900) == [(0, 1500), (900, 1350)]
    assert window_schedule(1500, 1500, 900) == [(0, 1500)]
    assert window_schedule(50, 1500, 900) == [(0, 50)]


@pytest.mark.slow  # 3,000 tokens
def test_sixty_seconds_run_three_windows_carrying_the_prompt_and_make_1_920_000_samples(engine, monkeypatch):
    seen = []
    keep_window = Track.keep_window

    def spy(track, sequence, window, stride_frames):  # at each window's end: the prompt it carried in
        seen.append((window, None if track.prompt is None else track.prompt.shape[1]))
        keep_window(track, sequence, window, stride_frames)

    monkeypatch.setattr(Track, "keep_window", spy)
    assert generate_one(engine, duration=60).waveform.shape == (1_920_000,)
    assert seen == [(0, None), (1, 600), (2, 600)]


def test_a_seed_reproduces_the_audio_solo_and_inside_a_mixed_batch(engine):
    alone = generate_one(engine, prompt="lo-fi beat", duration=1.5, seed=21)
    again = generate_one(engine, prompt="lo-fi beat", duration=1.5, seed=21)
    assert np.array_equal(alone.waveform, again.waveform)
    batch = generate(
        engine,
        [
            MusicGenRequest(prompt="an epic orchestral finale with brass", duration=2, seed=1, top_p=0.9),
            MusicGenRequest(prompt="lo-fi beat", duration=1.5, seed=21),
            MusicGenRequest(prompt="jazz", duration=0.5, seed=2, guidance_scale=1.0, temperature=0.5),
        ],
    )
    assert [r.batch_size for r in batch] == [3, 3, 3]
    assert [len(r.waveform) for r in batch] == [64_000, 48_000, 16_000]
    assert np.array_equal(batch[1].waveform, alone.waveform)
    epic_alone = generate_one(
        engine, prompt="an epic orchestral finale with brass", duration=2, seed=1, top_p=0.9
    )
    assert np.array_equal(batch[0].waveform, epic_alone.waveform)


def test_different_seeds_and_prompts_give_different_audio(engine):
    base = generate_one(engine).waveform
    assert not np.array_equal(base, generate_one(engine, seed=4).waveform)
    assert not np.array_equal(base, generate_one(engine, prompt="heavy metal").waveform)


@pytest.mark.parametrize(
    "change",
    [{"guidance_scale": 6.0}, {"temperature": 0.3}, {"top_k": 2}, {"top_p": 0.5}],
    ids=["guidance_scale", "temperature", "top_k", "top_p"],
)
def test_each_sampling_knob_changes_the_audio(engine, change):
    assert not np.array_equal(generate_one(engine).waveform, generate_one(engine, **change).waveform)


def test_a_seed_is_drawn_and_returned_when_absent(engine):
    (first, second) = generate(engine, [MusicGenRequest(prompt="a", duration=0.5)] * 2)
    assert first.seed != second.seed
    assert np.array_equal(
        generate_one(engine, prompt="a", duration=0.5, seed=first.seed).waveform, first.waveform
    )


def test_melody_changes_the_output_and_follows_its_pitch(melody_engine):
    plain = generate_one(melody_engine).waveform
    with_a = generate_one(melody_engine, melody=a_melody(440.0)).waveform
    with_c = generate_one(melody_engine, melody=a_melody(261.63)).waveform
    assert len(with_a) == len(plain) == SAMPLE_RATE
    assert not np.array_equal(plain, with_a)
    assert not np.array_equal(with_a, with_c)


def test_melody_reproduces_inside_a_batch(melody_engine):
    alone = generate_one(melody_engine, melody=a_melody(), duration=2)
    batch = generate(
        melody_engine,
        [
            MusicGenRequest(prompt="drum and bass", duration=1, seed=9),
            MusicGenRequest(prompt="lo-fi beat", duration=2, seed=3, melody=a_melody()),
        ],
    )
    assert np.array_equal(batch[1].waveform, alone.waveform)


def test_melody_on_a_text_only_model_is_refused_naming_melody(engine):
    (error,) = generate(engine, [MusicGenRequest(prompt="a", duration=1, melody=a_melody())])
    assert isinstance(error, InvalidRequest) and error.param == "melody"


def test_should_stop_ends_the_track_early(engine):
    stopped, finished = generate(
        engine,
        [MusicGenRequest(prompt="a", duration=1, seed=1), MusicGenRequest(prompt="b", duration=1, seed=2)],
        should_stop=[lambda: True, None],
    )
    assert stopped.stopped and len(stopped.waveform) == 0
    assert not finished.stopped and len(finished.waveform) == SAMPLE_RATE


@pytest.mark.parametrize("audio_format", ["wav", "flac", "ogg", "mp3"])
def test_each_format_decodes_to_the_right_length_and_rate(engine, audio_format):
    result = generate_one(engine, duration=2)
    decoded, rate = soundfile.read(
        io.BytesIO(encode_audio(result.waveform, result.sample_rate, audio_format))
    )
    assert rate == SAMPLE_RATE
    assert abs(len(decoded) - 2 * SAMPLE_RATE) <= (0 if audio_format in ("wav", "flac") else 1152)


def test_wav_is_16_bit_pcm(engine):
    result = generate_one(engine)
    info = soundfile.info(io.BytesIO(encode_audio(result.waveform, result.sample_rate, "wav")))
    assert info.subtype == "PCM_16" and info.frames == SAMPLE_RATE


@pytest.mark.parametrize(("frames", "prompt_frames"), [(10, 0), (10, 3), (40, 20)])
def test_delay_pattern_equals_transformers_where_it_applies(engine, frames, prompt_frames):
    prompt = torch.arange(4 * prompt_frames).view(4, prompt_frames) if prompt_frames else None
    ids = torch.full((4, 1), engine.start_token)
    if prompt is not None:
        ids = torch.cat([ids, prompt], dim=1)
    _, expected = engine.model.decoder.build_delay_pattern_mask(ids, engine.pad_token, max_length=frames + 4)
    assert torch.equal(delay_pattern(prompt, frames, 4, engine.start_token, engine.pad_token), expected)


def test_the_shortest_track_is_one_frame(engine):
    # Found by fuzzing: transformers' helper leaves such short patterns unmasked.
    assert generate_one(engine, duration=0.02).waveform.shape == (640,)


def test_the_engines_keep_the_engine_contract(engine, melody_engine):
    assert isinstance(engine, Engine) and isinstance(melody_engine, Engine)


# Failure isolation: whatever fails for one request fails that request alone.

TRACKS = [
    MusicGenRequest(prompt="lo-fi beat", duration=31, seed=1),
    MusicGenRequest(prompt="jazz", duration=50, seed=2, top_p=0.9),
    MusicGenRequest(prompt="an epic orchestral finale with brass", duration=1, seed=3),
]
SENTINEL = 1234.5


def solo_waveforms(engine: MusicGenEngine, requests: list[MusicGenRequest]) -> list[np.ndarray]:
    return [generate(engine, [request])[0].waveform for request in requests]


def unresamplable(waveform, source_rate, target_rate):
    raise ValueError("up and down must be positive")


def chroma_fault(waveform):
    raise IndexError("index 0 is out of bounds for axis 0 with size 0")


def out_of_memory(waveform, source_rate, target_rate):
    raise MemoryError


MELODY_FAULTS = [
    ("resampling", ("leap_ray.engines.chroma.resample", unresamplable), InvalidRequest),
    ("chroma", ("chroma", chroma_fault), InvalidRequest),
    ("out-of-memory", ("leap_ray.engines.chroma.resample", out_of_memory), ModelError),
]


@pytest.mark.parametrize(
    ("fault", "error_type"), [f[1:] for f in MELODY_FAULTS], ids=[f[0] for f in MELODY_FAULTS]
)
def test_a_melody_the_model_cannot_use_fails_its_request_alone_naming_melody(
    melody_engine, monkeypatch, fault, error_type
):
    innocents = [MusicGenRequest(prompt="drum and bass", duration=1, seed=9), TRACKS[2]]
    alone = solo_waveforms(melody_engine, innocents)
    target, replacement = fault
    if target == "chroma":
        monkeypatch.setattr(melody_engine.chromas, "extract", replacement)
    else:
        monkeypatch.setattr(target, replacement)
    culprit = MusicGenRequest(prompt="lo-fi beat", duration=1, seed=3, melody=a_melody())
    first, error, second = generate(melody_engine, [innocents[0], culprit, innocents[1]])
    assert type(error) is error_type
    if error_type is InvalidRequest:
        assert (error.status_code, error.param, error.code) == (422, "melody", "invalid_input")
    assert np.array_equal(first.waveform, alone[0]) and np.array_equal(second.waveform, alone[1])


def test_a_prompt_the_text_encoder_fails_on_fails_alone_with_a_model_error(engine, monkeypatch):
    encode_text = engine.encode_text

    def faulty(prompt):
        if prompt == "poison":
            raise RuntimeError("CUDA error: device-side assert triggered")
        return encode_text(prompt)

    monkeypatch.setattr(engine, "encode_text", faulty)
    error, result = generate(engine, [MusicGenRequest(prompt="poison", duration=1), TRACKS[2]])
    assert isinstance(error, ModelError) and error.code == "model_error"
    assert np.array_equal(result.waveform, solo_waveforms(engine, [TRACKS[2]])[0])


def test_a_track_that_fails_to_decode_fails_alone(engine, monkeypatch):
    decode = engine.model.audio_encoder.decode

    def faulty(codes, *args, **kwargs):
        if codes.shape[-1] == 25:  # half a second of frames
            raise RuntimeError("CUDA out of memory")
        return decode(codes, *args, **kwargs)

    monkeypatch.setattr(engine.model.audio_encoder, "decode", faulty)
    requests = [MusicGenRequest(prompt="a", duration=0.5, seed=1), TRACKS[2]]
    error, result = generate(engine, requests)
    assert isinstance(error, ModelError) and error.code == "model_error"
    assert np.array_equal(result.waveform, solo_waveforms(engine, [TRACKS[2]])[0])


def test_a_failing_progress_hook_fails_its_request_alone_as_an_internal_error(engine):
    def broken(event):
        raise RuntimeError("the event loop is closed")

    requests = [MusicGenRequest(prompt="a", duration=2, seed=1), TRACKS[2]]
    error, result = generate(engine, requests, progress=[broken, None])
    assert isinstance(error, LeapRayError) and (error.status_code, error.code) == (500, "internal_error")
    assert np.array_equal(result.waveform, solo_waveforms(engine, [TRACKS[2]])[0])


def test_a_fault_outside_any_request_fails_each_with_its_own_model_error(engine, monkeypatch):
    def broken():
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(engine, "spec", broken)
    first, second = generate(engine, TRACKS[:2])
    assert isinstance(first, ModelError) and isinstance(second, ModelError) and first is not second


def test_progress_is_a_typed_event_per_generated_second(engine):
    from leap_ray.api.progress import AudioProgress

    events = []
    generate(engine, [MusicGenRequest(prompt="a", duration=2, seed=1)], progress=[events.append])
    assert events == [AudioProgress(1.0, 2.0), AudioProgress(2.0, 2.0)]
