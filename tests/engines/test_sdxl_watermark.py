"""SDXL's invisible watermark, as diffusers applies it, per image: on by default (diffusers' pipelines
mark their images where invisible-watermark is installed), off per request (`apply_watermark`) or for
the whole engine (`watermark=False`); a marked image carries diffusers' 48 bits."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS
from imwatermark import WatermarkDecoder

from leap_ray.api.handoff import RefineRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines import sdxl_decode
from leap_ray.engines.contract import fits, generate
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_decode import watermarkable
from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine
from leap_ray.engines.sdxl_steps import StepBatch
from leap_ray.errors import ModelError
from tests.helpers import solo

TOLERANCE = 1e-3  # on 0-1 pixel values, CPU float32, as the engine's other oracle tests
SIZE = {"height": 256, "width": 256, "num_inference_steps": 2, "prompt": "a lighthouse"}
PATIENCE_S = 60


def watermark_bits(pixels: np.ndarray) -> list[int]:
    """The 48 bits imwatermark reads from an image as a client gets it (8 bits a channel, BGR)."""
    image = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)[:, :, ::-1]
    return list(WatermarkDecoder("bits", 48).decode(image, "dwtDct"))


def unmarked(reference):
    """The reference pipeline with diffusers' watermarker off (add_watermarker=False)."""
    return type(reference).from_pipe(reference, add_watermarker=False)


def test_a_batch_marks_the_rows_of_requests_that_keep_the_watermark_and_no_other(engine, reference):
    marked = SDXLRequest(seed=3, **SIZE)
    plain = SDXLRequest(seed=3, apply_watermark=False, **SIZE)
    first, second = generate(engine, [marked, plain])
    assert first.batch_size == second.batch_size == 2  # they shared each step
    assert watermark_bits(first.images[0]) == WATERMARK_BITS
    assert watermark_bits(second.images[0]) != WATERMARK_BITS
    # Each equals diffusers' own call: with its watermarker (its default here), and without it.
    assert np.abs(first.images[0] - solo(reference, marked, [3])[0]).max() < TOLERANCE
    assert np.abs(second.images[0] - solo(unmarked(reference), plain, [3])[0]).max() < TOLERANCE
    assert np.abs(first.images[0] - second.images[0]).max() > 0


def test_an_engine_with_the_watermark_off_marks_no_image(tiny_models, reference):
    engine = SDXLEngine(str(tiny_models["sdxl"]), watermark=False)
    (result,) = generate(engine, [SDXLRequest(seed=4, **SIZE)])
    assert watermark_bits(result.images[0]) != WATERMARK_BITS
    expected = solo(unmarked(reference), SDXLRequest(seed=4, **SIZE), [4])[0]
    assert np.abs(result.images[0] - expected).max() < TOLERANCE


@pytest.mark.parametrize(
    ("height", "width", "marked"),
    [(256, 256, True), (1024, 64, False), (64, 512, False), (255, 512, True), (128, 512, True)],
    ids=["256-square", "narrow-under-256-wide", "wide-but-under-256-squared", "wide-enough", "128x512"],
)
def test_only_images_at_least_256_wide_and_of_256_squared_pixels_are_marked(height, width, marked):
    assert watermarkable(height, width) is marked


def test_a_replica_without_invisible_watermark_fails_its_start_with_the_install_command(monkeypatch):
    monkeypatch.setattr(sdxl_decode, "is_invisible_watermark_available", lambda: False)
    with pytest.raises(ValueError) as error:
        sdxl_decode.sdxl_watermarker(True)
    assert "pip install --no-deps invisible-watermark==0.2.0" in str(error.value)
    assert "engine_kwargs: {watermark: false}" in str(error.value)
    assert sdxl_decode.sdxl_watermarker(False) is None  # the watermark off needs no package


def test_every_documented_install_installs_the_watermark_package():
    """Wherever the README installs the service (`pip install '.[serve]'` or `make install`), the
    watermark package comes too: the Makefile and the GPU check's wheels pin the same version."""
    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    serve_installs = [line for line in readme.splitlines() if "pip install '.[serve]'" in line]
    assert serve_installs and all(sdxl_decode.INSTALL_WATERMARK in line for line in serve_installs)
    pin = sdxl_decode.INSTALL_WATERMARK.split()[-1]
    assert f"--no-deps {pin}" in (root / "Makefile").read_text()
    assert pin in (root / "requirements" / "gpu-check-wheels.txt").read_text().splitlines()


def test_the_watermark_runs_off_the_step_thread_and_holds_no_neighbours_step(engine, monkeypatch):
    """While a finished request's images are being marked (held here until released), its batch
    neighbour keeps stepping to its end; the marked request then comes back with its marks."""
    watermarker, release, threads = engine.decoder.watermarker, threading.Event(), []
    real_apply = watermarker.apply_watermark

    def held_apply(images):
        threads.append(threading.current_thread().name)
        assert release.wait(30)
        return real_apply(images)

    monkeypatch.setattr(watermarker, "apply_watermark", held_apply)
    marked = SDXLRequest(seed=3, **SIZE)
    neighbour = SDXLRequest(seed=6, apply_watermark=False, **SIZE | {"num_inference_steps": 4})
    batch = StepBatch(engine)
    assert batch.admit(marked) is None and batch.admit(neighbour) is None
    finished = {}
    while neighbour.seed not in finished:  # the marked one's watermark is held all this while
        finished |= {request.seed: outcome for request, outcome in batch.step()}
    assert marked.seed not in finished and batch.load == marked.image_count
    release.set()
    while batch.load:
        finished |= {request.seed: outcome for request, outcome in batch.step()}
    assert threads and all(name.startswith("sdxl-watermark") for name in threads)
    assert watermark_bits(finished[marked.seed].images[0]) == WATERMARK_BITS
    assert watermark_bits(finished[neighbour.seed].images[0]) != WATERMARK_BITS


@pytest.fixture(scope="module")
def lanes_engine(tiny_models) -> SDXLEngine:
    """Images above 64² (so every watermarkable one) step in the own lane."""
    return SDXLEngine(str(tiny_models["sdxl"]), own_lane_above=64 * 64)


@pytest.fixture(scope="module")
def lanes_refiner(tiny_models) -> SDXLRefinerEngine:
    return SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]), own_lane_above=64 * 64)


def held_watermark(decoder, monkeypatch, fails: bool = False, calls: list | None = None) -> threading.Event:
    """Holds the decoder's watermark until the returned event is set; then marks (or raises). Each
    call's image count goes to `calls`."""
    watermarker, release = decoder.watermarker, threading.Event()
    real_apply = watermarker.apply_watermark

    def held_apply(images):
        if calls is not None:
            calls.append(len(images))
        assert release.wait(PATIENCE_S)
        if fails:
            raise RuntimeError("the watermark failed")
        return real_apply(images)

    monkeypatch.setattr(watermarker, "apply_watermark", held_apply)
    return release


def outcome_while_marked(batch: StepBatch, request, release: threading.Event, during=lambda: None):
    """Steps the batch until the request's images are held by the marking, then (after `during`)
    releases the watermark and steps until the request's outcome: the batch's load is the request's
    images at every step until then."""
    deadline = time.monotonic() + PATIENCE_S
    while not batch.marking.load:
        assert time.monotonic() < deadline, "never reached the marking"
        assert batch.step() == [] and batch.load == request.image_count
    during()
    release.set()
    while True:
        assert time.monotonic() < deadline, "no outcome"
        assert batch.load == request.image_count
        finished = batch.step()
        if finished:
            [(_, outcome)] = finished
            return outcome


def test_an_own_lane_request_counts_in_the_load_while_marked_and_leaves_it_after(lanes_engine, monkeypatch):
    release = held_watermark(lanes_engine.decoder, monkeypatch)
    request = SDXLRequest(seed=3, **SIZE)  # 256²: the own lane's
    batch = StepBatch(lanes_engine, max_load=4)
    assert batch.admit(request) is None
    outcome = outcome_while_marked(batch, request, release)
    assert isinstance(outcome, SDXLResult) and watermark_bits(outcome.images[0]) == WATERMARK_BITS
    assert batch.load == 0 and batch.own_lane.load == 0 and batch.marking.load == 0
    assert fits(batch, SDXLRequest(prompt="next", height=64, width=64, num_images_per_prompt=4))


def test_a_refinement_in_the_own_lane_counts_in_the_load_while_marked_and_leaves_it_after(
    engine, lanes_refiner, monkeypatch
):
    request = SDXLRequest(seed=3, refiner={}, **SIZE | {"num_inference_steps": 4})
    (handed,) = generate(engine, [request])
    assert isinstance(handed, SDXLResult) and handed.latents is not None, handed
    job = RefineRequest(request, handed.latents, handed.generator_states, handed.seeds, handed.timings)
    calls: list[int] = []
    release = held_watermark(lanes_refiner.decoder, monkeypatch, calls=calls)
    batch = lanes_refiner.running_batch(max_load=4)
    assert batch.admit(job) is None
    outcome = outcome_while_marked(batch, request, release)
    assert isinstance(outcome, SDXLResult) and len(outcome.images) == 1 and calls == [1]
    assert batch.load == 0 and batch.own_lane.load == 0 and batch.marking.load == 0


@pytest.mark.parametrize("fails", [True, False], ids=["its-watermark-fails", "it-is-cancelled-meanwhile"])
def test_an_own_lane_request_whose_marking_ends_badly_settles_and_leaves_the_load(
    lanes_engine, monkeypatch, fails
):
    release = held_watermark(lanes_engine.decoder, monkeypatch, fails=fails)
    request, cancelled = SDXLRequest(seed=13, **SIZE), threading.Event()
    batch = StepBatch(lanes_engine, max_load=4)
    assert batch.admit(request, should_stop=cancelled.is_set) is None
    outcome = outcome_while_marked(batch, request, release, during=cancelled.set)
    assert isinstance(outcome, ModelError if fails else SDXLResult), outcome
    assert batch.load == 0


def test_a_cleared_batch_drops_a_pending_marking_and_its_load(lanes_engine, monkeypatch):
    """After a fault of the batch, the driver failed every request: the marked one's later outcome is
    not handed back a second time, and nothing of it stays in the load."""
    release = held_watermark(lanes_engine.decoder, monkeypatch)
    request = SDXLRequest(seed=14, **SIZE)
    batch = StepBatch(lanes_engine, max_load=4)
    assert batch.admit(request) is None
    deadline = time.monotonic() + PATIENCE_S
    while not batch.marking.load:
        assert time.monotonic() < deadline
        batch.step()
    batch.clear()
    assert batch.load == 0
    release.set()
    settled = time.monotonic() + 1.0  # the marking finishes meanwhile (a 256² image: milliseconds)
    while time.monotonic() < settled:
        assert batch.step() == [] and batch.load == 0


def test_generate_closes_its_batch_and_its_marking_workers_end(engine):
    before = set(threading.enumerate())
    (result,) = generate(engine, [SDXLRequest(seed=3, **SIZE)])
    assert isinstance(result, SDXLResult)
    workers = [
        thread for thread in set(threading.enumerate()) - before if thread.name.startswith("sdxl-watermark")
    ]
    assert workers  # it was marked on them
    for worker in workers:
        worker.join(PATIENCE_S)
        assert not worker.is_alive()
