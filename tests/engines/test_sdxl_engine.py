import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from leap_ray.api.sdxl import CALLBACK_TENSOR_INPUTS, SDXLRequest
from leap_ray.engines.contract import Engine, generate
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.errors import InvalidRequest, LeapRayError, ModelError
from tests.helpers import solo

TOLERANCE = 1e-3  # on 0-1 pixel values, CPU float32
SMALL = {"height": 64, "width": 64, "num_inference_steps": 3}


def run_one(engine: SDXLEngine, **fields) -> SDXLResult:
    (result,) = generate(engine, [SDXLRequest(**{**SMALL, "seed": 11, **fields})])
    assert isinstance(result, SDXLResult)
    return result


def image(engine: SDXLEngine, **fields) -> np.ndarray:
    return np.stack(run_one(engine, **fields).images)


def test_a_mixed_batch_matches_solo_diffusers_calls_image_by_image(engine, reference):
    requests = [
        SDXLRequest(prompt="a red fox", seed=1, **SMALL),
        SDXLRequest(
            prompt=["a dog", "the moon"],
            negative_prompt="blurry",
            num_images_per_prompt=2,
            seed=7,
            guidance_scale=7.5,
            **SMALL,
        ),
        SDXLRequest(prompt="the sea", prompt_2="an oil painting", seed=3, guidance_scale=2.0, **SMALL),
        SDXLRequest(prompt="a tree", height=64, width=96, num_inference_steps=3, seed=4),
        SDXLRequest(prompt="no guidance", guidance_scale=1.0, seed=5, **SMALL),
        SDXLRequest(prompt="ancestral", scheduler="euler_ancestral", seed=6, **SMALL),
    ]
    results = generate(engine, requests)
    assert [len(result.images) for result in results] == [1, 4, 1, 1, 1, 1]
    # Every 64² image shares each step's UNet call, whatever its prompts, guidance or sampler.
    assert [result.batch_size for result in results] == [8, 8, 8, 1, 8, 8]
    for request, result in zip(requests, results, strict=True):
        assert result.seeds == [request.seed + j for j in range(request.image_count)]
        expected = solo(reference, request, result.seeds)
        assert np.abs(np.stack(result.images) - expected).max() < TOLERANCE


def test_seeds_are_random_when_absent_and_always_returned(engine):
    first, second = generate(engine, [SDXLRequest(prompt="a", **SMALL), SDXLRequest(prompt="a", **SMALL)])
    assert first.seeds != second.seeds
    assert not np.allclose(first.images[0], second.images[0])
    again = image(engine, prompt="a", seed=first.seeds[0])
    assert np.abs(again[0] - first.images[0]).max() < TOLERANCE


def test_a_request_with_a_bad_shape_fails_alone(engine):
    good = SDXLRequest(prompt="a", seed=1, **SMALL)
    bad = SDXLRequest(prompt="a", latents=torch.zeros(1, 4, 4, 4), **SMALL)
    ok, error = generate(engine, [good, bad])
    assert isinstance(ok, SDXLResult)
    assert isinstance(error, InvalidRequest) and error.param == "latents"


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or np.abs(a - b).max() > TOLERANCE


BASE = {"prompt": "a lighthouse"}
CHANGES = [
    ("prompt", {"prompt": "a submarine"}),
    ("prompt_2", {"prompt_2": "an oil painting"}),
    ("height", {"height": 72}),
    ("width", {"width": 80}),
    ("num_inference_steps", {"num_inference_steps": 4}),
    ("denoising_end", {"num_inference_steps": 4, "denoising_end": 0.5}),
    ("guidance_scale", {"guidance_scale": 9.0}),
    ("negative_prompt", {"negative_prompt": "fog"}),
    ("negative_prompt_2", {"negative_prompt": "fog", "negative_prompt_2": "rain"}),
    ("guidance_rescale", {"guidance_rescale": 0.7}),
    ("original_size", {"original_size": (256, 256)}),
    ("crops_coords_top_left", {"crops_coords_top_left": (256, 128)}),
    ("target_size", {"target_size": (512, 512)}),
    ("negative_original_size", {"negative_original_size": (256, 256), "negative_target_size": (64, 64)}),
    ("negative_target_size", {"negative_original_size": (64, 64), "negative_target_size": (256, 256)}),
    (
        "negative_crops_coords_top_left",
        {
            "negative_original_size": (64, 64),
            "negative_target_size": (64, 64),
            "negative_crops_coords_top_left": (256, 256),
        },
    ),
    ("eta", {"scheduler": "ddim", "eta": 1.0}),
    ("scheduler", {"scheduler": "dpmpp_2m"}),
    ("seed", {"seed": 12}),
]


@pytest.mark.parametrize("change", [c[1] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_each_parameter_changes_the_output(engine, change):
    before = {**BASE, **({"scheduler": "ddim"} if "eta" in change else {})}
    negative_with = {
        k: v for k, v in change.items() if k in ("negative_original_size", "negative_target_size")
    }
    if len(negative_with) == 2 and "negative_crops_coords_top_left" in change:
        before.update(negative_with)  # the crop is the only difference
    if "negative_prompt_2" in change:
        before["negative_prompt"] = change["negative_prompt"]
    assert differs(image(engine, **before), image(engine, **{**BASE, **change}))


NO_EFFECT = [
    ("negative_prompt_2-alone-is-zeroed", {"negative_prompt_2": "rain"}),
    ("negative_crops-alone", {"negative_crops_coords_top_left": (256, 256)}),
    ("negative_original_size-without-target", {"negative_original_size": (256, 256)}),
    ("eta-under-euler", {"eta": 1.0}),
    ("denoising_end-1", {"denoising_end": 1.0}),
]


@pytest.mark.parametrize("change", [c[1] for c in NO_EFFECT], ids=[c[0] for c in NO_EFFECT])
def test_documented_no_effect_cases(engine, change):
    assert not differs(image(engine, **BASE), image(engine, **{**BASE, **change}))


def test_num_images_per_prompt_gives_that_many_images_seeded_in_order(engine):
    result = run_one(engine, **BASE, num_images_per_prompt=3)
    assert result.seeds == [11, 12, 13]
    assert len(result.images) == 3
    assert not differs(result.images[1][None], image(engine, **BASE, seed=12))


def test_latents_replace_the_seeded_noise(engine, reference):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    assert not differs(image(engine, **BASE, latents=noise), image(engine, **BASE))
    assert differs(image(engine, **BASE, latents=noise * 0.5), image(engine, **BASE))


def test_prompt_embeddings_give_what_their_prompts_give(engine, reference):
    embeds, negative, pooled, negative_pooled = reference.encode_prompt(
        prompt="a lighthouse", negative_prompt="fog", do_classifier_free_guidance=True, device="cpu"
    )
    from_text = image(engine, prompt="a lighthouse", negative_prompt="fog")
    from_embeds = image(
        engine,
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled,
    )
    assert not differs(from_text, from_embeds)
    for name, tensor in [
        ("prompt_embeds", embeds),
        ("pooled_prompt_embeds", pooled),
        ("negative_prompt_embeds", negative),
        ("negative_pooled_prompt_embeds", negative_pooled),
    ]:
        changed = {
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
            name: tensor * 1.5,
        }
        assert differs(from_text, image(engine, **changed)), name


def test_callback_sees_only_its_own_rows_and_changes_only_its_own_images(engine, reference):
    seen: list[dict[str, tuple]] = []

    def brighten(pipeline, step, timestep, tensors):
        seen.append({name: tuple(t.shape) for name, t in tensors.items()})
        assert pipeline.guidance_scale == 5.0
        return {"latents": tensors["latents"] + 0.1}

    plain = SDXLRequest(prompt="a lighthouse", seed=3, num_images_per_prompt=2, **SMALL)
    with_callback = SDXLRequest(
        prompt="a lighthouse",
        seed=11,
        callback_on_step_end=brighten,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
        guidance_scale=5.0,
        **SMALL,
    )
    first, second = generate(engine, [plain, with_callback])
    assert first.batch_size == 3
    assert (
        seen
        == [
            {
                "latents": (1, 4, 8, 8),
                "prompt_embeds": (2, 77, 96),
                "add_text_embeds": (2, 32),
                "add_time_ids": (2, 6),
            }
        ]
        * 3
    )
    assert not differs(np.stack(first.images), solo(reference, plain, first.seeds))
    generators = [torch.Generator().manual_seed(11)]
    expected = reference(
        **with_callback.to_pipeline_kwargs(),
        generator=generators,
        output_type="np",
        callback_on_step_end=brighten,
        callback_on_step_end_tensor_inputs=["latents"],
    ).images
    assert not differs(np.stack(second.images), expected)


def test_a_callback_interrupt_stops_only_its_own_request(engine, reference):
    def stop_after_first(pipeline, step, timestep, tensors):
        pipeline._interrupt = step >= 0
        return tensors

    stopping = SDXLRequest(prompt="stop", seed=2, callback_on_step_end=stop_after_first, **SMALL)
    running = SDXLRequest(prompt="run", seed=4, **SMALL)
    stopped, finished = generate(engine, [stopping, running])
    assert stopped.stopped_at_step == 0 and finished.stopped_at_step is None
    assert not differs(np.stack(finished.images), solo(reference, running, finished.seeds))
    expected = reference(
        **stopping.to_pipeline_kwargs(),
        generator=[torch.Generator().manual_seed(2)],
        output_type="np",
        callback_on_step_end=stop_after_first,
    ).images
    assert not differs(np.stack(stopped.images), expected)


def test_should_stop_leaves_the_batch_at_the_next_step(engine):
    stopped, finished = generate(
        engine,
        [SDXLRequest(prompt="a", seed=1, **SMALL), SDXLRequest(prompt="b", seed=2, **SMALL)],
        should_stop=[lambda: True, None],
    )
    assert stopped.stopped_at_step == 0
    assert finished.stopped_at_step is None


def test_ddim_scheduler_is_the_stock_one(engine, reference):
    request = SDXLRequest(prompt="a", scheduler="ddim", eta=0.5, seed=5, **SMALL)
    (result,) = generate(engine, [request])
    ddim = StableDiffusionXLPipeline.from_pipe(
        reference, scheduler=DDIMScheduler.from_config(reference.scheduler.config)
    )
    ddim.set_progress_bar_config(disable=True)
    expected = ddim(
        **request.to_pipeline_kwargs(), generator=[torch.Generator().manual_seed(5)], output_type="np"
    )
    assert not differs(np.stack(result.images), expected.images)


def test_the_engine_keeps_the_engine_contract(engine):
    assert isinstance(engine, Engine)


# Failure isolation: whatever fails for one request fails that request alone.


def scaled(pipeline, step, timestep, tensors):
    """A well-behaved callback."""
    return {"latents": tensors["latents"] * 1.01}


def misbehaving_from_step_1(misbehave):
    def callback(pipeline, step, timestep, tensors):
        return misbehave(tensors) if step >= 1 else scaled(pipeline, step, timestep, tensors)

    return callback


def divide_by_zero(tensors):
    return 1 / 0


MISBEHAVIOURS = [
    ("raises", divide_by_zero),
    ("returns-a-list", lambda tensors: [tensors["latents"]]),
    ("returns-a-bare-tensor", lambda tensors: tensors["latents"]),
    ("wrong-shape", lambda tensors: {"latents": tensors["latents"][:, :2]}),
    ("wrong-dtype", lambda tensors: {"latents": tensors["latents"].double()}),
    ("not-a-tensor", lambda tensors: {"latents": 0.5}),
    ("unlisted-tensor-of-the-wrong-rows", lambda tensors: {"add_time_ids": torch.zeros(1, 6)}),
]


def same_images(first: SDXLResult, second: SDXLResult) -> bool:
    return np.array_equal(np.stack(first.images), np.stack(second.images))


@pytest.mark.parametrize("misbehave", [m[1] for m in MISBEHAVIOURS], ids=[m[0] for m in MISBEHAVIOURS])
def test_a_failing_callback_fails_its_request_alone(engine, reference, misbehave):
    innocents = [
        SDXLRequest(prompt="a red fox", seed=1, **SMALL),
        SDXLRequest(prompt="the moon", seed=5, num_images_per_prompt=2, **SMALL),
    ]
    culprit = SDXLRequest(
        prompt="a dog", seed=2, callback_on_step_end=misbehaving_from_step_1(misbehave), **SMALL
    )
    first, error, second = generate(engine, [innocents[0], culprit, innocents[1]])
    assert isinstance(error, InvalidRequest)
    assert (error.status_code, error.param, error.code) == (422, "callback_on_step_end", "callback_error")
    assert first.batch_size == second.batch_size == 4  # it shared their first step, then left
    # To the rounding of batched arithmetic, they get what they get without it and from diffusers alone.
    without = generate(engine, innocents)
    for request, result, expected in zip(innocents, (first, second), without, strict=True):
        assert not differs(np.stack(result.images), np.stack(expected.images))
        assert not differs(np.stack(result.images), solo(reference, request, result.seeds))


def test_a_callback_returning_a_tensor_it_did_not_list_acts_alone_as_in_a_batch(engine, reference):
    def recondition(pipeline, step, timestep, tensors):
        # It listed only latents, yet diffusers applies any of its callback tensors returned by name.
        return {"add_time_ids": torch.tensor([[1024.0, 1024.0, 512.0, 256.0, 64.0, 64.0]] * 2)}

    request = SDXLRequest(prompt="a lighthouse", seed=11, callback_on_step_end=recondition, **SMALL)
    lister = SDXLRequest(
        prompt="a dog",
        seed=3,
        callback_on_step_end=lambda pipeline, step, timestep, tensors: tensors,
        callback_on_step_end_tensor_inputs=list(CALLBACK_TENSOR_INPUTS),
        **SMALL,
    )
    alone = np.stack(run_one(engine, **request.model_dump(exclude_unset=True)).images)
    batched = generate(engine, [lister, request])[1]
    expected = reference(
        **request.to_pipeline_kwargs(),
        generator=[torch.Generator().manual_seed(11)],
        output_type="np",
        callback_on_step_end=recondition,
        callback_on_step_end_tensor_inputs=["latents"],
    ).images
    assert batched.batch_size == 2
    assert not differs(alone, expected)
    assert not differs(np.stack(batched.images), expected)
    assert differs(alone, image(engine, prompt="a lighthouse"))  # the returned tensor did act


def test_a_failing_progress_hook_fails_its_request_alone_as_an_internal_error(engine):
    def broken(event):
        raise RuntimeError("the event loop is closed")

    requests = [SDXLRequest(prompt="a", seed=1, **SMALL), SDXLRequest(prompt="b", seed=2, **SMALL)]
    error, result = generate(engine, requests, progress=[broken, None])
    assert isinstance(error, LeapRayError) and (error.status_code, error.code) == (500, "internal_error")
    assert isinstance(result, SDXLResult) and result.stopped_at_step is None


def test_a_prompt_the_encoder_fails_on_fails_alone_with_a_model_error(engine, monkeypatch):
    encode = engine.pipeline.encode_prompt

    def faulty(**kwargs):
        prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
        if "poison" in prompts:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return encode(**kwargs)

    monkeypatch.setattr(engine.pipeline, "encode_prompt", faulty)
    innocent = SDXLRequest(prompt="a", seed=1, **SMALL)
    result, error = generate(engine, [innocent, SDXLRequest(prompt="poison", seed=2, **SMALL)])
    assert isinstance(error, ModelError) and (error.status_code, error.code) == (503, "model_error")
    assert same_images(result, generate(engine, [innocent])[0])


def unet_faulting(engine, monkeypatch, fault_when) -> None:
    """Makes the UNet raise for the inputs `fault_when(sample)` picks."""
    forward = engine.pipeline.unet.forward

    def faulty(sample, *args, **kwargs):
        if fault_when(sample):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(engine.pipeline.unet, "forward", faulty)


GROUP = [
    SDXLRequest(prompt="a red fox", seed=1, **SMALL),
    SDXLRequest(prompt="the moon", seed=5, num_images_per_prompt=2, **SMALL),
    SDXLRequest(prompt="the sea", seed=8, guidance_scale=7.0, **SMALL),
]


def test_a_call_too_big_for_the_model_is_rerun_one_request_at_a_time(engine, monkeypatch):
    alone = [generate(engine, [request])[0] for request in GROUP]
    unet_faulting(engine, monkeypatch, lambda sample: sample.shape[0] > 4)  # rows of one request at most
    results = generate(engine, GROUP)
    assert [result.batch_size for result in results] == [1, 2, 1]
    for result, expected in zip(results, alone, strict=True):  # to the rounding of batched encoding
        assert not differs(np.stack(result.images), np.stack(expected.images))


def test_a_model_fault_on_one_requests_rows_fails_only_that_request(engine, monkeypatch):
    alone = [generate(engine, [request])[0] for request in GROUP]
    culprit = SDXLRequest(prompt="b", seed=2, latents=torch.full((1, 4, 8, 8), 1e4), **SMALL)
    unet_faulting(engine, monkeypatch, lambda sample: sample.abs().max() > 1e3)
    first, second, error, third = generate(engine, [*GROUP[:2], culprit, GROUP[2]])
    assert isinstance(error, ModelError) and (error.status_code, error.code) == (503, "model_error")
    for result, expected in zip((first, second, third), alone, strict=True):
        assert not differs(np.stack(result.images), np.stack(expected.images))


def test_a_fault_while_decoding_in_float16_leaves_the_vae_usable(tiny_models, monkeypatch):
    # diffusers upcasts a float16 VAE to decode and casts it back only when decoding succeeds.
    half = SDXLEngine(str(tiny_models["sdxl"]), dtype="float16")
    decode = half.pipeline.vae.decode

    def faulty(latents, *args, **kwargs):
        if latents.shape[0] > 1:
            raise RuntimeError("CUDA out of memory")
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(half.pipeline.vae, "decode", faulty)
    results = generate(half, GROUP[::2])
    assert all(isinstance(result, SDXLResult) for result in results)
    assert half.pipeline.vae.dtype == torch.float16


def test_a_fault_outside_any_request_fails_each_with_its_own_model_error(engine, monkeypatch):
    def broken():
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(engine, "spec", broken)
    first, second = generate(engine, GROUP[:2])
    assert isinstance(first, ModelError) and isinstance(second, ModelError) and first is not second
    assert first.code == second.code == "model_error"


def test_progress_is_a_typed_event_per_step_with_a_preview_every_n(engine):
    from leap_ray.api.progress import StepProgress

    events = []
    request = SDXLRequest(prompt="a", seed=1, preview_every=2, **{**SMALL, "num_inference_steps": 4})
    generate(engine, [request], progress=[events.append])
    assert all(isinstance(event, StepProgress) for event in events)
    assert [(event.step, event.total) for event in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [event.preview is not None for event in events] == [False, True, False, True]


def test_split_parts_of_a_request_make_its_images(engine):
    whole = SDXLRequest(prompt=["a", "b"], num_images_per_prompt=3, seed=2**53 - 3, **SMALL)
    parts = whole.split(max_images=2)
    assert [part.image_count for part in parts] == [2, 1, 2, 1]
    images = generate(engine, [whole])[0]
    joined = generate(engine, parts)
    assert (
        [seed for part in joined for seed in part.seeds]
        == images.seeds
        == [2**53 - 3, 2**53 - 2, 2**53 - 1, 0, 1, 2]
    )
    for expected, got in zip(images.images, [image for part in joined for image in part.images], strict=True):
        assert np.abs(expected - got).max() < 1e-3


def test_the_spec_gives_the_models_native_size(engine, reference):
    """The UNet's sample size × the VAE's scale factor: the size diffusers itself defaults to."""
    native = reference.default_sample_size * reference.vae_scale_factor
    assert engine.spec().native_size == native == 256
