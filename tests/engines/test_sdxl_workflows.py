"""img2img, inpainting, LoRA adapters and the refiner hand-off: every image equals its diffusers
reference (the workflow's own pipeline; `load_lora_weights` + `set_adapters`; the base with
`denoising_end` and `output_type="latent"` then the refiner with `denoising_start`, same generators),
while sharing step batches with other requests."""

import numpy as np
import pytest
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from leap_ray.api.handoff import RefineRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.api.sdxl_workflows import RefinerOptions
from leap_ray.engines.contract import generate
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine
from leap_ray.errors import InvalidRequest
from tests.helpers import ensemble_reference, lora_solo, png, reference_pipeline, run_steps, seeds_of, solo

TOLERANCE = 1e-3  # on 0-1 pixel values, CPU float32
SMALL = {"height": 64, "width": 64}


RANDOM = np.random.default_rng(0)
PHOTO = png(RANDOM.integers(0, 256, (66, 70, 3), dtype=np.uint8))  # rounds down to 64 × 64... as diffusers
SQUARE = png(RANDOM.integers(0, 256, (64, 64, 3), dtype=np.uint8))
MASK = png(np.where(np.arange(64)[None, :] < 32, 255, 0).repeat(64, axis=0).astype(np.uint8))

TEXT = SDXLRequest(prompt="a lighthouse", seed=10, num_inference_steps=6, **SMALL)
IMG2IMG = SDXLRequest(prompt="a boat", image=PHOTO, strength=0.6, num_inference_steps=5, seed=11)
INPAINT = SDXLRequest(
    prompt="a door", negative_prompt="rust", image=SQUARE, mask_image=MASK, num_inference_steps=4, seed=12
)
INPAINT_FULL = SDXLRequest(
    prompt="a window",
    image=SQUARE,
    mask_image=MASK,
    strength=1.0,
    num_images_per_prompt=2,
    num_inference_steps=3,
    scheduler="euler_ancestral",
    guidance_scale=1.0,
    seed=13,
)
# In img2img and inpainting a negative size acts alone, and their time ids are laid out unlike text2img's.
IMG2IMG_NEGATIVE = SDXLRequest(
    prompt="a pier",
    image=PHOTO,
    num_images_per_prompt=2,
    negative_original_size=(32, 32),
    strength=0.8,
    num_inference_steps=4,
    seed=14,
)
WORKFLOWS = [TEXT, IMG2IMG, INPAINT, INPAINT_FULL, IMG2IMG_NEGATIVE]


def assert_solo(result: object, reference: StableDiffusionXLPipeline, request: SDXLRequest) -> None:
    assert isinstance(result, SDXLResult), result
    expected = solo(reference, request, seeds_of(request))
    assert np.abs(np.stack(result.images) - expected).max() < TOLERANCE, request.prompt


def test_img2img_and_inpainting_join_a_step_batch_and_equal_their_pipelines(engine, reference):
    batch = engine.running_batch()
    outcomes = run_steps(batch, {0: [TEXT], 1: [IMG2IMG, IMG2IMG_NEGATIVE], 2: [INPAINT, INPAINT_FULL]})
    for request in WORKFLOWS:
        assert_solo(outcomes[request.seed], reference, request)
    # They shared UNet calls with the text request (same latent shape): they joined its steps.
    assert outcomes[INPAINT.seed].batch_size > INPAINT.image_count


def test_img2img_keeps_the_image_size_rounded_down_to_a_multiple_of_8():
    assert (IMG2IMG.height, IMG2IMG.width) == (64, 64)


def test_inpainting_changes_only_the_latents_inside_the_mask(engine):
    final = {}

    def keep(prompt: str):  # the latents after the last step, as the callback sees them
        def callback(pipeline, step, timestep, tensors):
            final[prompt] = tensors["latents"].clone()
            return tensors

        return callback

    requests = [
        INPAINT.model_copy(update={"prompt": prompt, "callback_on_step_end": keep(prompt)})
        for prompt in ("a door", "a wall")
    ]
    run_steps(engine.running_batch(), {0: requests})
    difference = (final["a door"] - final["a wall"]).abs()
    # The mask is white (repainted) on the left half: latent columns 0-3 of 8.
    assert difference[..., 4:].max() == 0 < difference[..., :4].mean()


@pytest.fixture(scope="module")
def lora_engine(tiny_models, lora_sources) -> SDXLEngine:
    return SDXLEngine(str(tiny_models["sdxl"]), loras=lora_sources, max_loaded_loras=2)


LORA_REQUESTS = [
    SDXLRequest(prompt="plain", seed=20, num_inference_steps=3, **SMALL),
    SDXLRequest(prompt="inked", seed=21, num_inference_steps=3, loras=[{"name": "ink"}], **SMALL),
    SDXLRequest(
        prompt="both",
        seed=22,
        num_inference_steps=4,
        loras=[{"name": "ink", "scale": 0.5}, {"name": "paper", "scale": 1.5}],
        **SMALL,
    ),
]


@pytest.mark.parametrize("per_row", [True, False], ids=["per-row", "a-call-per-set"])
def test_lora_images_equal_diffusers_set_adapters_whoever_shares_their_unet_calls(
    per_row, lora_engine, lora_reference, monkeypatch
):
    monkeypatch.setattr(lora_engine, "per_row_adapters", per_row)
    outcomes = run_steps(lora_engine.running_batch(), {0: LORA_REQUESTS})
    results = [outcomes[request.seed] for request in LORA_REQUESTS]
    plain = None
    for request, result in zip(LORA_REQUESTS, results, strict=True):
        expected = lora_solo(lora_reference, request)
        assert np.abs(np.stack(result.images) - expected).max() < TOLERANCE, request.prompt
        # Per row: one UNet call for the three sets (each row its own adapters); else a call per set.
        assert result.batch_size == (3 if per_row else 1)
        plain = expected if plain is None else plain
    assert np.abs(np.stack(results[1].images) - plain).max() > 0.01  # the adapter acts


def test_per_row_adapters_act_on_their_own_rows_only_with_guidance_and_several_images(
    lora_engine, lora_reference
):
    requests = [
        SDXLRequest(
            prompt="a", seed=60, num_images_per_prompt=2, loras=[{"name": "paper", "scale": -0.7}], **SMALL
        ),
        SDXLRequest(prompt="b", seed=62, guidance_scale=1.0, **SMALL),  # no guidance: one row per image
        SDXLRequest(prompt="c", seed=63, loras=[{"name": "ink", "scale": 2.0}, {"name": "paper"}], **SMALL),
    ]
    requests = [request.model_copy(update={"num_inference_steps": 3}) for request in requests]
    outcomes = run_steps(lora_engine.running_batch(), {0: requests})
    for request in requests:
        assert outcomes[request.seed].batch_size == 4
        expected = lora_solo(lora_reference, request)
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE, request.prompt


def test_adapters_beyond_the_bound_are_evicted_least_recently_used(tiny_models, lora_sources):
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras=lora_sources, max_loaded_loras=1)
    adapters = engine.adapters
    adapters.activate((("ink", 1.0),))
    adapters.activate((("paper", 1.0),))
    assert list(adapters.loaded) == ["paper"]
    assert engine.pipeline.get_list_adapters() == {"unet": ["paper"]}
    adapters.activate((("ink", 1.0),))
    assert (list(adapters.loaded), adapters.loads) == (["ink"], 3)
    (result,) = generate(engine, [LORA_REQUESTS[2]])  # names two: more than this replica may hold
    assert isinstance(result, InvalidRequest) and result.param == "loras"


def test_an_unknown_adapter_is_refused_naming_loras(lora_engine):
    request = SDXLRequest(prompt="x", loras=[{"name": "chalk"}], **SMALL)
    with pytest.raises(InvalidRequest, match="chalk") as caught:
        request.check_against(lora_engine.spec())
    assert caught.value.param == "loras"
    assert lora_engine.spec().loras == ("ink", "paper")


@pytest.fixture(scope="module")
def refiner(tiny_models) -> SDXLRefinerEngine:
    return SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]))


@pytest.fixture(scope="module")
def refiner_reference(tiny_models) -> StableDiffusionXLImg2ImgPipeline:
    return reference_pipeline(StableDiffusionXLImg2ImgPipeline, tiny_models["sdxl-refiner"])


# An ancestral sampler draws noise at every step: the refiner must go on with the base's generators.
ENSEMBLE = SDXLRequest(
    prompt=["a castle", "a field"],
    negative_prompt="fog",
    num_images_per_prompt=2,
    num_inference_steps=8,
    denoising_end=0.7,
    scheduler="euler_ancestral",
    refiner={"num_inference_steps": 10, "aesthetic_score": 7.0},
    seed=30,
    **SMALL,
)
PLAIN_ENSEMBLE = SDXLRequest(prompt="a hill", refiner={}, num_inference_steps=5, seed=40, **SMALL)
INPAINT_ENSEMBLE = INPAINT.model_copy(update={"refiner": RefinerOptions(), "denoising_end": 0.75, "seed": 41})


def hand_off(request: SDXLRequest, result: SDXLResult) -> RefineRequest:
    assert result.images == [] and result.latents is not None, result
    return RefineRequest(request, result.latents, result.generator_states, result.seeds, result.timings)


def test_refined_images_equal_the_two_pipeline_ensemble_with_the_same_generators(
    engine, reference, refiner, refiner_reference
):
    requests = [ENSEMBLE, PLAIN_ENSEMBLE, INPAINT_ENSEMBLE]
    outcomes = run_steps(engine.running_batch(), {0: [TEXT, ENSEMBLE], 1: [PLAIN_ENSEMBLE, INPAINT_ENSEMBLE]})
    handoffs = [hand_off(request, outcomes[request.seed]) for request in requests]
    # The refinements join the refiner's step batch at different steps, and share its UNet calls.
    refined = run_steps(refiner.running_batch(), {0: handoffs[:1], 2: handoffs[1:]})
    for request in requests:
        result = refined[request.seed]
        assert isinstance(result, SDXLResult), result
        expected = ensemble_reference(reference, refiner_reference, request)
        assert np.abs(np.stack(result.images) - expected).max() < TOLERANCE, request.prompt
        assert set(result.timings) >= {"encode_s", "generate_s", "refine_s"}
    assert PLAIN_ENSEMBLE.denoising_end == 0.8  # with a refiner, the hand-off defaults to diffusers' 0.8


def test_adapters_with_fused_attention_projections_are_refused_at_start(tiny_models, lora_sources):
    with pytest.raises(ValueError, match="fuse_qkv"):
        SDXLEngine(str(tiny_models["sdxl"]), loras=lora_sources, fuse_qkv=True)


def test_a_request_waits_while_its_adapters_and_the_running_ones_would_not_fit(tiny_models, lora_sources):
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras=lora_sources, max_loaded_loras=1)
    batch = engine.running_batch()
    inked, papered = (
        LORA_REQUESTS[1],
        LORA_REQUESTS[2].model_copy(update={"loras": LORA_REQUESTS[2].loras[1:]}),
    )
    assert batch.admit(inked) is None
    assert batch.can_join(LORA_REQUESTS[0]) and batch.can_join(inked) and not batch.can_join(papered)
    while batch.load:
        batch.step()
    assert batch.can_join(papered)  # the ink request has left: paper may evict it
    assert engine.adapters.loads == 1


def test_an_adapter_that_cannot_be_loaded_fails_its_request_only(
    tiny_models, lora_sources, reference, tmp_path
):
    broken = {**lora_sources, "broken": str(tmp_path)}  # an empty folder: no weights
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras=broken)
    failing = SDXLRequest(prompt="x", seed=50, loras=[{"name": "broken"}], num_inference_steps=2, **SMALL)
    plain = SDXLRequest(prompt="y", seed=51, num_inference_steps=2, **SMALL)
    error, result = generate(engine, [failing, plain])
    assert error.code == "adapter_unavailable" and str(tmp_path) not in error.message
    assert_solo(result, reference, plain)
    assert list(engine.adapters.loaded) == [] and engine.pipeline.get_list_adapters() == {}


def test_an_inpainting_split_into_parts_gives_the_whole_requests_images(engine, reference):
    whole = INPAINT.model_copy(update={"num_images_per_prompt": 4, "prompt": ["a door", "a wall"]})
    parts = whole.split(3)  # as a deployment splits a request bigger than its batch
    assert [part.image_count for part in parts] == [3, 1, 3, 1]
    outcomes = run_steps(
        engine.running_batch(), {0: parts[:2], 1: parts[2:]}
    )  # run_steps keys outcomes by seed
    results = [outcomes[part.seed] for part in parts]
    images = np.stack([image for result in results for image in result.images])
    assert np.abs(images - solo(reference, whole, seeds_of(whole))).max() < TOLERANCE


def test_hub_adapters_are_fetched_when_the_engine_starts(monkeypatch, tiny_models):
    fetched = []

    def snapshot_download(repo_id, allow_patterns):
        fetched.append((repo_id, allow_patterns))
        return str(tiny_models["sdxl-lora"])

    monkeypatch.setattr("leap_ray.engines.sdxl_lora.snapshot_download", snapshot_download)
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras={"hub": "someone/some-lora"})
    assert fetched == [("someone/some-lora", ["*.safetensors", "*.json"])]  # before any request
    assert engine.adapters.sources == {"hub": str(tiny_models["sdxl-lora"])}


def test_an_adapter_that_matches_no_layer_is_refused_and_leaves_the_others_exact(
    tiny_models, lora_sources, lora_reference, tmp_path
):
    weights = load_file(tiny_models["sdxl-lora"] / "pytorch_lora_weights.safetensors")
    renamed = {key.replace("unet.", "transformer.", 1): value for key, value in weights.items()}
    save_file(renamed, tmp_path / "pytorch_lora_weights.safetensors")  # keys of another model
    engine = SDXLEngine(str(tiny_models["sdxl"]), loras={**lora_sources, "odd": str(tmp_path)})
    batch = engine.running_batch()
    assert batch.admit(LORA_REQUESTS[1]) is None  # "ink" is loaded first: the failure must not leave it on
    odd = SDXLRequest(prompt="x", seed=70, loras=[{"name": "odd"}], num_inference_steps=2, **SMALL)
    assert batch.admit(odd).code == "adapter_unavailable"
    for request in (LORA_REQUESTS[0], LORA_REQUESTS[2]):
        assert batch.admit(request) is None
    outcomes = {}
    while batch.load:
        outcomes.update((request.seed, outcome) for request, outcome in batch.step())
    for request in LORA_REQUESTS:
        expected = lora_solo(lora_reference, request)
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE, request.prompt
