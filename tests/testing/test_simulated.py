"""The simulated engines keep the engine contract and take their latency model's time: seeded outputs
of the right shape, progress, cancellation, a failure on cue that stays with its request, and (under
step batching) a short request that leaves a running batch before a long one."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from leap_ray.api.audio import pcm16
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.progress import AudioDelta, AudioProgress
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.contract import Engine, generate
from leap_ray.engines.results import MusicGenResult, SDXLResult
from leap_ray.errors import ModelError
from leap_ray.testing.simulated import SimulatedMusicGenEngine, SimulatedSDXLEngine

FAST_SDXL = {"step_s": 0.002, "image_step_s": 0.0, "overhead_s": 0.0}
FAST_MUSICGEN = {"token_s": 0.0005, "track_token_s": 0.0, "overhead_s": 0.0}


def test_both_keep_the_engine_contract():
    assert isinstance(SimulatedSDXLEngine(), Engine) and isinstance(SimulatedMusicGenEngine(), Engine)


@pytest.mark.parametrize(
    "engine_class", [SimulatedSDXLEngine, SimulatedMusicGenEngine], ids=["sdxl", "musicgen"]
)
def test_the_constructor_takes_startup_s_as_a_compile_and_warm_up_would_and_none_by_default(engine_class):
    started = time.perf_counter()
    engine_class(startup_s=0.2)
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    engine_class()
    assert time.perf_counter() - started < 0.1


def test_timings_say_how_long_the_engine_has_been_up():
    engine = SimulatedSDXLEngine(**FAST_SDXL)
    time.sleep(0.05)
    (result,) = generate(engine, [SDXLRequest(prompt="a", height=64, width=64, num_inference_steps=2)])
    assert result.timings["engine_up_s"] >= 0.05 + result.timings["generate_s"]


def test_sdxl_images_are_seeded_shaped_and_take_the_latency_models_time():
    engine = SimulatedSDXLEngine(**FAST_SDXL)
    request = SDXLRequest(
        prompt="a", height=64, width=96, num_images_per_prompt=2, num_inference_steps=25, seed=7
    )
    started = time.perf_counter()
    (first,) = generate(engine, [request])
    assert time.perf_counter() - started >= 25 * 0.002
    (second,) = generate(engine, [request])
    assert isinstance(first, SDXLResult) and first.seeds == [7, 8]
    assert [image.shape for image in first.images] == [(64, 96, 3)] * 2
    assert all(np.array_equal(a, b) for a, b in zip(first.images, second.images, strict=True))


def test_a_step_costs_the_images_running_at_the_reference_size():
    engine = SimulatedSDXLEngine()
    batch = engine.running_batch()
    batch.admit(SDXLRequest(prompt="a", height=1024, width=1024, num_images_per_prompt=2, seed=1))
    assert abs(engine.step_s(batch.running) - (0.0145 + 2 * 0.0172)) < 1e-9


def test_under_step_batching_a_short_request_leaves_before_a_long_one():
    batch = SimulatedSDXLEngine(**FAST_SDXL).running_batch()
    assert (
        batch.admit(SDXLRequest(prompt="long", height=64, width=64, num_inference_steps=50, seed=1)) is None
    )
    for _ in range(5):
        assert batch.step() == []
    assert (
        batch.admit(SDXLRequest(prompt="short", height=64, width=64, num_inference_steps=4, seed=2)) is None
    )
    finished = [[request.prompt for request, _ in batch.step()] for _ in range(45)]
    assert finished.index(["short"]) == 3 and finished.index(["long"]) == 44


def test_a_failure_on_cue_and_a_cancel_stay_with_their_request():
    engine = SimulatedMusicGenEngine(fail_prompt="poison", **FAST_MUSICGEN)
    events = []
    good, bad, gone = (
        MusicGenRequest(prompt=p, duration=2, seed=s) for p, s in (("a", 1), ("poison", 2), ("b", 3))
    )
    results = generate(
        engine, [good, bad, gone], should_stop=[None, None, lambda: True], progress=[events.append] * 3
    )
    assert isinstance(results[0], MusicGenResult) and results[0].waveform.shape == (64_000,)
    assert isinstance(results[1], ModelError)
    assert [event.seconds for event in events] == [1.0, 2.0]  # the good track's only
    assert results[2].stopped and results[2].waveform.shape == (0,)


def test_musicgen_tracks_have_exact_sample_counts_and_seeded_audio():
    engine = SimulatedMusicGenEngine(**FAST_MUSICGEN)
    request = MusicGenRequest(prompt="a", duration=1.5, seed=4)
    (first,), (second,) = generate(engine, [request]), generate(engine, [request])
    assert first.waveform.shape == (48_000,) and np.array_equal(first.waveform, second.waveform)


def test_a_die_prompt_kills_the_process_running_it_as_a_gpu_fault_would():
    code = (
        "from leap_ray.api.sdxl import SDXLRequest\n"
        "from leap_ray.engines.contract import generate\n"
        "from leap_ray.testing.simulated import SimulatedSDXLEngine\n"
        "engine = SimulatedSDXLEngine(die_prompt='crash', step_s=0.0, image_step_s=0.0, overhead_s=0.0)\n"
        "generate(engine, [SDXLRequest(prompt='fine', height=64, width=64, num_inference_steps=2)])\n"
        "print('survived a fine request', flush=True)\n"
        "generate(engine, [SDXLRequest(prompt='crash', height=64, width=64, num_inference_steps=2)])\n"
        "print('survived the cue')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-1000:]
    assert done.stdout == "survived a fine request\n"


def test_a_streamed_track_comes_in_half_second_pieces_of_its_own_pcm16_samples():
    engine = SimulatedMusicGenEngine(**FAST_MUSICGEN)
    streamed, plain = (MusicGenRequest(prompt="a", duration=1.3, seed=4, stream=s) for s in (True, False))
    events: list = []
    result, quiet = generate(engine, [streamed, plain], progress=[events.append, lambda event: None])
    deltas = [event for event in events if isinstance(event, AudioDelta)]
    assert [event.seconds for event in events if isinstance(event, AudioProgress)] == [1.0]
    assert [delta.start for delta in deltas] == [0.0, 0.5, 1.0]  # the last: what is left (0.3 s)
    joined = b"".join(delta.pcm for delta in deltas)
    assert joined == pcm16(result.waveform, 32_000) and len(joined) == 2 * 41_600
    assert np.array_equal(result.waveform, quiet.waveform)  # streaming changes nothing in the track


def test_a_track_without_stream_reports_no_audio():
    events: list = []
    generate(
        SimulatedMusicGenEngine(**FAST_MUSICGEN),
        [MusicGenRequest(prompt="a", duration=1, seed=1)],
        progress=[events.append],
    )
    assert events == [AudioProgress(1.0, 1.0)]
