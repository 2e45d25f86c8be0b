"""Step-level batching: requests that join and leave a running batch at any step each get exactly the
images of a solo diffusers call, share UNet calls whatever their steps, schedulers or guidance, and
cannot change each other's result by failing or being cancelled."""

import numpy as np
import torch

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl_steps import StepBatch
from leap_ray.errors import InvalidRequest, LeapRayError
from tests.helpers import run_steps, seeds_of, solo

TOLERANCE = 1e-3  # on 0-1 pixel values, CPU float32
SMALL = {"height": 64, "width": 64}


STAGGERED = {
    0: [SDXLRequest(prompt="a red fox", seed=1, num_inference_steps=8, **SMALL)],
    1: [
        SDXLRequest(
            prompt="the sea", seed=2, num_inference_steps=3, guidance_scale=9.0, guidance_rescale=0.7, **SMALL
        )
    ],
    2: [
        SDXLRequest(prompt="a tree", seed=3, num_inference_steps=5, scheduler="ddim", eta=0.5, **SMALL),
        SDXLRequest(prompt="no guidance", seed=4, num_inference_steps=4, guidance_scale=1.0, **SMALL),
    ],
    5: [
        SDXLRequest(
            prompt=["two", "prompts"],
            negative_prompt="blurry",
            num_images_per_prompt=2,
            seed=5,
            num_inference_steps=6,
            scheduler="dpmpp_2m",
            denoising_end=0.7,
            original_size=(128, 96),
            negative_original_size=(32, 32),
            negative_target_size=(64, 64),
            **SMALL,
        )
    ],
    6: [
        SDXLRequest(
            prompt="wider", seed=6, height=64, width=96, num_inference_steps=4, scheduler="euler_ancestral"
        )
    ],
}


def test_requests_joining_at_steps_0_1_2_5_6_each_equal_their_solo_diffusers_call(engine, reference):
    outcomes = run_steps(StepBatch(engine), STAGGERED)
    for request in (request for arrivals in STAGGERED.values() for request in arrivals):
        result = outcomes[request.seed]
        assert isinstance(result, SDXLResult), result
        assert result.seeds == [request.seed + j for j in range(request.image_count)]
        expected = solo(reference, request, seeds_of(request))
        assert np.abs(np.stack(result.images) - expected).max() < TOLERANCE, request.seed


def test_requests_of_different_steps_schedulers_and_guidance_share_unet_calls(engine):
    shared = StepBatch(engine)
    outcomes = run_steps(shared, STAGGERED)
    alone_calls = 0
    for request in (request for arrivals in STAGGERED.values() for request in arrivals):
        alone = StepBatch(engine)
        run_steps(alone, {0: [request]})
        alone_calls += alone.unet_calls  # one UNet call per step of its own
    assert shared.unet_calls < alone_calls / 2
    assert max(outcome.batch_size for outcome in outcomes.values()) >= 4  # images of several requests


def test_a_raising_callback_and_a_cancelled_request_leave_their_batch_mates_unchanged(engine, reference):
    def raising(pipeline, step, timestep, tensors):
        if step == 2:
            raise RuntimeError("user code fails")
        return {}

    cancelled = {"now": False}
    innocent = SDXLRequest(prompt="innocent", seed=21, num_inference_steps=6, **SMALL)
    batch = StepBatch(engine)
    assert batch.admit(innocent) is None
    assert (
        batch.admit(
            SDXLRequest(prompt="bad", seed=22, num_inference_steps=6, callback_on_step_end=raising, **SMALL)
        )
        is None
    )
    assert (
        batch.admit(
            SDXLRequest(prompt="gone", seed=23, num_inference_steps=6, **SMALL),
            should_stop=lambda: cancelled["now"],
        )
        is None
    )
    outcomes = {}
    for step in range(6):
        cancelled["now"] = step == 1
        outcomes.update((request.seed, outcome) for request, outcome in batch.step())
    assert isinstance(outcomes[22], InvalidRequest) and outcomes[22].param == "callback_on_step_end"
    assert outcomes[23].stopped_at_step == 1
    assert (
        np.abs(np.stack(outcomes[21].images) - solo(reference, innocent, seeds_of(innocent))).max()
        < TOLERANCE
    )


def test_a_request_the_model_rejects_fails_alone_at_admission(engine):
    batch = StepBatch(engine)
    bad = SDXLRequest(prompt="a", seed=1, latents=torch.zeros(1, 4, 16, 16), **SMALL)
    error = batch.admit(bad)
    assert isinstance(error, InvalidRequest) and error.param == "latents" and not batch.load


def test_requests_finishing_together_are_decoded_together_and_a_failing_decode_is_retried_alone(
    engine, reference, monkeypatch
):
    requests = [SDXLRequest(prompt=f"p{i}", seed=30 + i, num_inference_steps=3, **SMALL) for i in range(3)]
    batch = StepBatch(engine)
    real_decode, decoded_rows = engine.decoder, []

    def decode(latents, marked):
        decoded_rows.append(latents.shape[0])
        if latents.shape[0] > 1 and len(decoded_rows) == 1:
            raise RuntimeError("CUDA out of memory")  # the shared decode fails once
        return real_decode(latents, marked)

    monkeypatch.setattr(engine, "decoder", decode)
    outcomes = run_steps(batch, {0: requests})
    assert decoded_rows == [3, 1, 1, 1]
    for request in requests:
        assert (
            np.abs(
                np.stack(outcomes[request.seed].images) - solo(reference, request, seeds_of(request))
            ).max()
            < TOLERANCE
        )


def test_requests_joining_at_one_step_share_one_prompt_encoding_and_a_failing_one_fails_alone(
    engine, reference, monkeypatch
):
    encode, calls = engine.pipeline.encode_prompt, []

    def counted(**kwargs):
        prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
        calls.append(prompts)
        if "poison" in prompts:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return encode(**kwargs)

    monkeypatch.setattr(engine.pipeline, "encode_prompt", counted)
    together = [
        SDXLRequest(prompt="a fox", seed=41, num_inference_steps=2, **SMALL),
        SDXLRequest(
            prompt=["two", "prompts"], num_images_per_prompt=2, seed=42, num_inference_steps=3, **SMALL
        ),
    ]
    outcomes = run_steps(StepBatch(engine), {0: together})
    assert calls == [["a fox", "two", "prompts"]]  # one call for both newcomers
    for request in together:
        expected = solo(reference, request, seeds_of(request))
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE
    calls.clear()
    poisoned = [together[0], SDXLRequest(prompt="poison", seed=43, num_inference_steps=2, **SMALL)]
    outcomes = run_steps(StepBatch(engine), {0: poisoned})
    assert calls == [["a fox", "poison"], ["a fox"], ["poison"]]  # the shared call, then each alone
    assert isinstance(outcomes[43], LeapRayError) and outcomes[43].code == "model_error"
    assert isinstance(outcomes[41], SDXLResult)
