"""Token-level batching for MusicGen: tracks that join and leave a running batch at any token each
give exactly their solo audio, share decoder steps whatever their prompts, durations, guidance and
sampling, and cannot change each other's audio by failing or being cancelled."""

import base64

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, MusicgenForConditionalGeneration

from benchmarks.musicgen_steps import OperationCount
from leap_ray.api.audio import DecodedAudio
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.progress import AudioDelta
from leap_ray.engines.contract import RunningBatch, generate
from leap_ray.engines.musicgen import MusicGenEngine
from leap_ray.engines.musicgen_decoder import StaticDecoder
from leap_ray.engines.musicgen_rows import TrackRows
from leap_ray.engines.musicgen_stream import SNR_TOLERANCE_DB, snr_db
from leap_ray.engines.results import MusicGenResult
from leap_ray.errors import InvalidRequest, LeapRayError, ModelError

# Windows of 4 s moving 2.4 s (audiocraft's 30 s and 18 s, scaled down), so a 9 s track runs four.
SHORT_WINDOWS = {"window_s": 4.0, "extend_stride_s": 2.4}
LONG = MusicGenRequest(prompt="jazz", duration=9, seed=3, temperature=0.5)
ARRIVALS = {
    0: [LONG],
    1: [MusicGenRequest(prompt="lo-fi beat", duration=2, seed=1)],
    50: [
        MusicGenRequest(prompt="an epic orchestral finale", duration=1, seed=2, top_p=0.9, guidance_scale=5)
    ],
    400: [MusicGenRequest(prompt="rain", duration=1, seed=4, top_k=5, guidance_scale=1.5)],
}


@pytest.fixture(scope="module", params=["musicgen", "musicgen-melody"])
def engine(request, tiny_models) -> MusicGenEngine:
    return MusicGenEngine(str(tiny_models[request.param]), **SHORT_WINDOWS)


def run_tokens(
    batch: RunningBatch, arrivals: dict[int, list], hooks: dict | None = None
) -> dict[int, object]:
    """Steps the batch until it is empty, admitting `arrivals[k]` before token k; outcomes by seed.
    `hooks[seed]` are (should_stop, progress) for that request."""
    outcomes, step = {}, 0
    while batch.load or any(k >= step for k in arrivals):
        for request in arrivals.get(step, []):
            assert batch.admit(request, *(hooks or {}).get(request.seed, ())) is None
        outcomes.update((request.seed, outcome) for request, outcome in batch.step())
        step += 1
    return outcomes


def solo(engine: MusicGenEngine, request: MusicGenRequest) -> np.ndarray:
    (result,) = generate(engine, [request])
    return result.waveform


def test_tracks_joining_after_tokens_1_50_and_400_each_give_their_solo_audio(engine):
    outcomes = run_tokens(engine.running_batch(), ARRIVALS)
    for request in (request for batch in ARRIVALS.values() for request in batch):
        result = outcomes[request.seed]
        assert isinstance(result, MusicGenResult), result
        assert result.waveform.shape == (round(request.duration * 32_000),)
        assert np.array_equal(result.waveform, solo(engine, request)), request.seed


def test_rows_of_different_prompts_durations_guidance_and_sampling_share_decoder_steps(engine):
    shared = engine.running_batch()
    outcomes = run_tokens(shared, ARRIVALS)
    alone_calls = []
    for request in (request for batch in ARRIVALS.values() for request in batch):
        alone = engine.running_batch()
        run_tokens(alone, {0: [request]})
        alone_calls.append(alone.decoder_calls)
    # Every token of the shorter tracks rode on one of the long track's own steps.
    assert shared.decoder_calls == max(alone_calls) < sum(alone_calls)
    assert max(outcome.batch_size for outcome in outcomes.values()) == 3  # three tracks at token 50


def test_a_cancelled_a_failing_and_a_faulting_track_leave_the_others_unchanged(engine, monkeypatch):
    tokens = {"now": 0}

    def failing_progress(event):
        raise RuntimeError("the client's progress hook fails")

    real_step = StaticDecoder.forward_step

    def faulty_step(self, last, positions, span, first_row=0):
        tokens["now"] += 1
        if tokens["now"] == 30 and last.shape[0] > 2:
            raise RuntimeError("CUDA out of memory")  # a shared step fails once: each track reruns alone
        return real_step(self, last, positions, span, first_row)

    monkeypatch.setattr(StaticDecoder, "forward_step", faulty_step)
    cancelled = MusicGenRequest(prompt="gone", duration=2, seed=21)
    failing = MusicGenRequest(prompt="bad hook", duration=2, seed=22)
    innocent = MusicGenRequest(prompt="innocent", duration=2, seed=23)
    hooks = {21: (lambda: tokens["now"] >= 40, None), 22: (None, failing_progress)}
    outcomes = run_tokens(engine.running_batch(), {0: [cancelled, failing, innocent]}, hooks)
    assert outcomes[21].stopped
    assert isinstance(outcomes[22], LeapRayError) and outcomes[22].status_code == 500
    monkeypatch.setattr(StaticDecoder, "forward_step", real_step)
    assert np.array_equal(outcomes[23].waveform, solo(engine, innocent))


def test_a_track_whose_rows_fault_alone_fails_alone(engine, monkeypatch):
    real_step = StaticDecoder.forward_step

    def faulty_step(self, last, positions, span, first_row=0):
        if last.shape[0] == 2 and first_row == 2:  # the second track's rows, stepped alone
            raise RuntimeError("CUDA error: an illegal memory access")
        if last.shape[0] > 2:
            raise RuntimeError("CUDA out of memory")
        return real_step(self, last, positions, span, first_row)

    monkeypatch.setattr(StaticDecoder, "forward_step", faulty_step)
    first, second = (MusicGenRequest(prompt=p, duration=1, seed=s) for p, s in (("a", 1), ("b", 2)))
    outcomes = run_tokens(engine.running_batch(), {0: [first, second]})
    assert isinstance(outcomes[2], ModelError)
    monkeypatch.setattr(StaticDecoder, "forward_step", real_step)
    assert np.array_equal(outcomes[1].waveform, solo(engine, first))


def test_a_request_the_model_cannot_take_fails_alone_at_admission(tiny_models):
    batch = MusicGenEngine(str(tiny_models["musicgen"])).running_batch()  # text only: it takes no melody
    assert batch.admit(MusicGenRequest(prompt="a", duration=1, seed=1)) is None
    melody = DecodedAudio(np.zeros(32_000, dtype=np.float32), 32_000)
    error = batch.admit(MusicGenRequest(prompt="b", duration=1, seed=2, melody=melody))
    assert isinstance(error, InvalidRequest) and error.param == "melody" and len(batch.running) == 1


def test_greedy_decoding_equals_transformers_generate(tiny_models):
    path = str(tiny_models["musicgen"])
    model = MusicgenForConditionalGeneration.from_pretrained(path).eval()
    inputs = AutoTokenizer.from_pretrained(path)(["lo-fi beat"], return_tensors="pt")
    with torch.inference_mode():  # 1 s: 50 frames, 53 tokens past the start under the delay pattern
        expected = model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=53)
    request = MusicGenRequest(prompt="lo-fi beat", duration=1, seed=0, top_k=1, guidance_scale=3.0)
    outcomes = run_tokens(MusicGenEngine(path).running_batch(), {0: [request]})
    assert np.array_equal(outcomes[0].waveform, expected[0, 0].numpy())


def test_tracks_with_the_same_melody_and_prompt_move_windows_independently(tiny_models):
    engine = MusicGenEngine(str(tiny_models["musicgen-melody"]), **SHORT_WINDOWS)
    melody = DecodedAudio(np.sin(np.arange(64_000) / 20).astype(np.float32), 32_000)
    twins = [MusicGenRequest(prompt="a", duration=5, seed=seed, melody=melody) for seed in (1, 2)]
    outcomes = run_tokens(engine.running_batch(), {0: twins})
    for request in twins:
        assert np.array_equal(outcomes[request.seed].waveform, solo(engine, request))


def test_progress_comes_per_generated_second_across_windows_and_a_cancel_stops_at_the_next_token(engine):
    events, cancelled = [], {"now": False}
    long = MusicGenRequest(prompt="a", duration=6, seed=1)  # two of the short windows
    stopped = MusicGenRequest(prompt="b", duration=6, seed=2)
    batch = engine.running_batch()
    assert batch.admit(long, None, events.append) is None
    assert batch.admit(stopped, lambda: cancelled["now"]) is None
    outcomes, tokens = {}, 0
    while batch.load:
        tokens += 1
        cancelled["now"] = tokens >= 10
        outcomes.update((request.seed, outcome) for request, outcome in batch.step())
        if 2 in outcomes and "at" not in cancelled:
            cancelled["at"] = tokens
    assert [event.seconds for event in events] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert outcomes[2].stopped and cancelled["at"] == 10  # it left at the token it was cancelled at


def test_the_host_reads_a_tracks_codes_only_when_it_finishes_a_window(engine, monkeypatch):
    reads = []
    real_read = TrackRows.read

    def counted(self, row, positions):
        reads.append((row, positions))
        return real_read(self, row, positions)

    monkeypatch.setattr(TrackRows, "read", counted)
    batch = engine.running_batch()
    tracks = [MusicGenRequest(prompt="a", duration=d, seed=s) for s, d in ((1, 9), (2, 2))]
    outcomes = run_tokens(batch, {0: tracks[:1], 7: tracks[1:]})
    assert all(isinstance(outcome, MusicGenResult) for outcome in outcomes.values())
    windows = len(engine.start_track(tracks[0], None, None).windows) + 1  # four windows and one
    assert len(reads) == windows and batch.decoder_calls > 400


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_steady_state_step_never_waits_for_the_device(tiny_models):
    engine = MusicGenEngine(str(tiny_models["musicgen-melody"]), cuda_graphs=True, batch_buckets=[1, 2, 4])
    batch = engine.running_batch(max_load=4)
    for seed in range(3):
        assert batch.admit(MusicGenRequest(prompt="a", duration=5, seed=seed)) is None
    batch.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):  # within the first window, between progress reports
            batch.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.load == 3


def test_a_streamed_track_sends_its_audio_in_pieces_that_join_to_its_final_track(engine):
    events = []
    streamed = MusicGenRequest(prompt="jazz", duration=6, seed=5, stream=True)  # two short windows
    outcomes = run_tokens(
        engine.running_batch(),
        {0: [streamed], 30: [MusicGenRequest(prompt="rain", duration=1, seed=6)]},
        {5: (None, events.append)},
    )
    pieces = [event for event in events if isinstance(event, AudioDelta)]
    samples = [np.frombuffer(base64.b64decode(piece.audio), dtype="<i2") / 32767.0 for piece in pieces]
    starts = np.cumsum([0] + [len(piece) for piece in samples[:-1]]) / 32_000
    assert [piece.start for piece in pieces] == pytest.approx(list(starts))
    assert len(pieces) >= 12  # a piece each half second, the last at the end
    final = outcomes[5].waveform
    joined = np.concatenate(samples)
    assert joined.shape == final.shape
    assert snr_db(np.clip(final, -1, 1), joined) >= SNR_TOLERANCE_DB
    assert np.array_equal(final, solo(engine, streamed.model_copy(update={"stream": False})))


def test_a_prompt_longer_than_the_cache_holds_is_refused_naming_prompt_and_the_others_run_on(engine):
    long_prompt = "la " * (engine.cache_shape.prompt_tokens_held + 10)
    first, second = (MusicGenRequest(prompt="a", duration=1, seed=s) for s in (1, 2))
    batch = engine.running_batch()
    decoder = (batch.admit(first), engine.decoder)[1]
    error = batch.admit(MusicGenRequest(prompt=long_prompt, duration=1, seed=3))
    assert isinstance(error, InvalidRequest) and error.param == "prompt" and "tokens" in str(error)
    outcomes = run_tokens(batch, {0: [second]})
    assert engine.decoder is decoder
    assert np.array_equal(outcomes[2].waveform, solo(engine, second))


def test_a_streamed_track_whose_piece_fails_to_decode_fails_alone(engine, monkeypatch):
    decode = engine.decode_codes

    def faulty(codes):
        if codes.shape[-1] < 50:  # a streamed piece's segment; whole tracks here are 50 frames or more
            raise RuntimeError("CUDA out of memory")
        return decode(codes)

    monkeypatch.setattr(engine, "decode_codes", faulty)
    streamed = MusicGenRequest(prompt="jazz", duration=3, seed=7, stream=True)
    innocent = MusicGenRequest(prompt="rain", duration=1, seed=8)
    events = []
    outcomes = run_tokens(engine.running_batch(), {0: [streamed, innocent]}, {7: (None, events.append)})
    assert isinstance(outcomes[7], ModelError)
    assert not any(isinstance(event, AudioDelta) for event in events)
    monkeypatch.setattr(engine, "decode_codes", decode)
    assert np.array_equal(outcomes[8].waveform, solo(engine, innocent))


def operations_per_step(engine: MusicGenEngine, tracks: int) -> int:
    batch = engine.running_batch(max_load=16)
    for seed in range(tracks):  # every sampling setting, so that no row's settings are skipped
        knobs = [{}, {"temperature": 0.0}, {"top_p": 0.9}, {"top_k": 3, "guidance_scale": 1.0}][seed % 4]
        assert batch.admit(MusicGenRequest(prompt="a", duration=5, seed=seed, **knobs)) is None
    batch.step()
    with OperationCount() as counter:
        batch.step()
    return counter.count


def test_a_token_step_over_16_tracks_takes_the_torch_operations_of_one(engine):
    # Before the batched sampler: 123 operations at 1 track, 404 at 16 (19 more per track).
    one, sixteen = operations_per_step(engine, 1), operations_per_step(engine, 16)
    assert sixteen <= one * 1.05, (one, sixteen)
