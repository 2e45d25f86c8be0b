"""The step batch's own lane: images above `own_lane_above` pixels step on a thread of their own, so a
small request never waits for a big one's UNet call or decode; every image still equals its solo
diffusers call, LoRA rows included, and a big request's fault or cancellation stays its own."""

import threading
import time

import numpy as np
import pytest

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_steps import StepBatch
from leap_ray.errors import LeapRayError
from tests.helpers import lora_solo, run_steps, seeds_of, solo

TOLERANCE = 1e-3  # on 0-1 pixel values, CPU float32
SMALL = {"height": 64, "width": 64}
BIG = {"height": 128, "width": 96}  # above the 64² the engines here keep in the main lane
PATIENCE_S = 60


@pytest.fixture(scope="module")
def lanes_engine(tiny_models) -> SDXLEngine:
    return SDXLEngine(str(tiny_models["sdxl"]), own_lane_above=64 * 64)


def blocked_until(released: threading.Event):
    """A step-end callback that holds its request's first step until `released` is set."""

    def callback(pipeline, step, timestep, tensors):
        released.wait(PATIENCE_S)
        return {}

    return callback


def steps_until(batch: StepBatch, done) -> dict[int, object]:
    """Steps the batch until `done(outcomes)`, within PATIENCE_S; outcomes by seed."""
    outcomes, deadline = {}, time.monotonic() + PATIENCE_S
    while not done(outcomes):
        assert time.monotonic() < deadline, f"no progress: {outcomes}"
        outcomes.update((request.seed, outcome) for request, outcome in batch.step())
    return outcomes


def test_big_and_small_images_in_their_two_lanes_each_equal_their_solo_diffusers_call(
    lanes_engine, reference
):
    arrivals = {
        0: [SDXLRequest(prompt="a big fox", seed=1, num_inference_steps=5, **BIG)],
        1: [SDXLRequest(prompt="small", seed=2, num_inference_steps=3, guidance_scale=9.0, **SMALL)],
        2: [
            SDXLRequest(prompt="big too", seed=3, num_inference_steps=4, scheduler="ddim", eta=0.5, **BIG),
            SDXLRequest(prompt="small too", seed=4, num_inference_steps=4, num_images_per_prompt=2, **SMALL),
        ],
    }
    batch = StepBatch(lanes_engine)
    outcomes = run_steps(batch, arrivals)
    for request in (request for requests in arrivals.values() for request in requests):
        result = outcomes[request.seed]
        assert isinstance(result, SDXLResult), result
        expected = solo(reference, request, seeds_of(request))
        assert np.abs(np.stack(result.images) - expected).max() < TOLERANCE, request.prompt
    assert batch.lane.unet_calls >= 4 and batch.own_lane.lane.unet_calls >= 5
    assert batch.load == 0


def test_a_small_request_finishes_while_a_big_one_holds_its_step(lanes_engine, reference):
    released = threading.Event()
    big = SDXLRequest(
        prompt="big", seed=11, num_inference_steps=2, callback_on_step_end=blocked_until(released), **BIG
    )
    small = SDXLRequest(prompt="small", seed=12, num_inference_steps=3, **SMALL)
    batch = StepBatch(lanes_engine)
    assert batch.admit(big) is None and batch.admit(small) is None
    outcomes = steps_until(batch, lambda outcomes: 12 in outcomes)
    assert not released.is_set() and 11 not in outcomes and batch.load == 1  # the big one still held
    released.set()
    outcomes |= steps_until(batch, lambda outcomes: 11 in outcomes)
    for request in (big, small):
        expected = solo(
            reference, request.model_copy(update={"callback_on_step_end": None}), seeds_of(request)
        )
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE


def test_a_fault_in_the_own_lane_fails_its_own_request_and_clear_drops_what_was_in_flight(
    lanes_engine, monkeypatch
):
    start = lanes_engine.start

    def failing_start(admitted):
        if admitted.request.prompt == "poison":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return start(admitted)

    monkeypatch.setattr(lanes_engine, "start", failing_start)
    batch = StepBatch(lanes_engine)
    for seed, prompt in ((21, "poison"), (22, "fine")):
        assert batch.admit(SDXLRequest(prompt=prompt, seed=seed, num_inference_steps=2, **BIG)) is None
    outcomes = steps_until(batch, lambda outcomes: len(outcomes) == 2)
    assert isinstance(outcomes[21], LeapRayError) and isinstance(outcomes[22], SDXLResult)

    released = threading.Event()
    held = SDXLRequest(
        prompt="held", seed=23, num_inference_steps=2, callback_on_step_end=blocked_until(released), **BIG
    )
    assert batch.admit(held) is None and batch.step() == [] and batch.load == 1
    batch.clear()  # the driver failed every request in the batch
    released.set()
    assert batch.load == 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # what was in flight never comes back
        assert batch.step() == []


def test_lora_rows_in_both_lanes_equal_diffusers_while_an_adapter_loads_beside_a_big_step(
    tiny_models, lora_sources, lora_reference
):
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras=lora_sources, own_lane_above=64 * 64)
    released = threading.Event()
    big = SDXLRequest(
        prompt="big inked",
        seed=31,
        num_inference_steps=2,
        loras=[{"name": "ink", "scale": 0.8}],
        callback_on_step_end=blocked_until(released),
        **BIG,
    )
    small = SDXLRequest(
        prompt="small paper", seed=32, num_inference_steps=2, loras=[{"name": "paper"}], **SMALL
    )
    plain = SDXLRequest(prompt="small plain", seed=33, num_inference_steps=2, **SMALL)
    batch = StepBatch(engine)
    assert batch.admit(big) is None and batch.admit(plain) is None
    outcomes = steps_until(batch, lambda outcomes: 33 in outcomes)  # beside the held big step
    threading.Timer(0.5, released.set).start()  # "paper" loads while the big step holds the model
    assert batch.admit(small) is None
    outcomes |= steps_until(batch, lambda outcomes: {31, 32} <= outcomes.keys())
    for request in (big, small, plain):
        expected = lora_solo(lora_reference, request.model_copy(update={"callback_on_step_end": None}))
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE, request.prompt
