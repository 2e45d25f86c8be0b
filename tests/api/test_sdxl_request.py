import base64
import math

import pytest
import torch
from pydantic import ValidationError

from leap_ray.api.common import MAX_SEED
from leap_ray.api.sdxl import (
    CALL_PARAMETERS,
    CALLBACK_TENSOR_INPUTS,
    EMBEDDING_FIELDS,
    PROMPT_PARAMETERS,
    TEXT_FIELDS,
    SDXLModelSpec,
    SDXLRequest,
    guidance_is_on,
)
from leap_ray.api.tensors import encode_tensor
from leap_ray.errors import InvalidRequest, invalid_request_from

SPEC = SDXLModelSpec(
    latent_channels=4, vae_scale_factor=8, text_embed_width=96, pooled_embed_width=32, text_tokens=77
)


def wire(shape, dtype=torch.float32, fill=0.5):
    return encode_tensor(torch.full(shape, fill, dtype=dtype))


def test_defaults_are_the_specs():
    request = SDXLRequest(prompt="a cat")
    assert (request.height, request.width) == (1024, 1024)
    assert request.num_inference_steps == 50
    assert request.guidance_scale == 5.0
    assert request.num_images_per_prompt == 1
    assert request.eta == 0.0
    assert request.guidance_rescale == 0.0
    assert request.crops_coords_top_left == (0, 0)
    assert request.target_size is None  # diffusers then uses (height, width): (1024, 1024) by default
    assert request.callback_on_step_end_tensor_inputs == ["latents"]
    assert request.output_format == "png"


def test_callback_tensor_inputs_are_the_pipelines():
    from diffusers import StableDiffusionXLPipeline

    assert set(CALLBACK_TENSOR_INPUTS) == set(StableDiffusionXLPipeline._callback_tensor_inputs)


def test_the_parameter_groups_name_the_requests_fields_and_the_specs_widths():
    assert set(PROMPT_PARAMETERS) | set(CALL_PARAMETERS) <= SDXLRequest.model_fields.keys()
    assert set(TEXT_FIELDS) | set(EMBEDDING_FIELDS) <= set(PROMPT_PARAMETERS)
    for embedding in EMBEDDING_FIELDS.values():
        assert isinstance(getattr(SPEC, embedding.width), int)
        assert set(embedding.replaces) <= set(TEXT_FIELDS)
        assert embedding.pooled is None or embedding.pooled in EMBEDDING_FIELDS


GUIDANCE_SCALES = [
    ("0", 0.0, False),
    ("exactly-1", 1.0, False),
    ("just-above-1", 1.01, True),
    ("5", 5.0, True),
]


@pytest.mark.parametrize(
    ("scale", "on"), [c[1:] for c in GUIDANCE_SCALES], ids=[c[0] for c in GUIDANCE_SCALES]
)
def test_guidance_is_on_only_above_1(scale, on):
    assert guidance_is_on(scale) is on
    assert SDXLRequest(prompt="a", guidance_scale=scale).guidance_is_on() is on


def test_a_split_request_gives_each_part_its_prompts_rows_and_images_seeds():
    latents = torch.randn(4, 4, 8, 8)
    text = {"prompt": ["a", "b"], "negative_prompt": "n", "height": 64, "width": 64, "seed": 10}
    whole = SDXLRequest(**text, num_images_per_prompt=2, latents=latents)
    parts = whole.split(1)
    assert [(part.prompt, part.seed, part.image_count) for part in parts] == [
        (["a"], 10, 1),
        (["a"], 11, 1),
        (["b"], 12, 1),
        (["b"], 13, 1),
    ]
    assert all(torch.equal(part.latents, latents[index : index + 1]) for index, part in enumerate(parts))
    assert all(
        part.negative_prompt == "n" and part.model_fields_set == whole.model_fields_set for part in parts
    )
    assert all(part.image_encoding_seed is None for part in parts)  # text-to-image encodes no image


def test_a_split_request_without_a_seed_draws_one_that_its_parts_follow():
    parts = SDXLRequest(prompt="a", num_images_per_prompt=3, height=64, width=64).split(2)
    first = parts[0].seed
    assert first is not None and [part.seed for part in parts] == [first, (first + 2) % (MAX_SEED + 1)]


def test_a_split_request_of_embeddings_gives_each_part_its_prompts_rows():
    embeds, pooled = torch.randn(2, 77, 96), torch.randn(2, 32)
    parts = SDXLRequest(prompt_embeds=embeds, pooled_prompt_embeds=pooled, seed=3).split(1)
    assert [part.seed for part in parts] == [3, 4]
    for row, part in enumerate(parts):
        assert torch.equal(part.prompt_embeds, embeds[row : row + 1])
        assert torch.equal(part.pooled_prompt_embeds, pooled[row : row + 1])
        assert part.negative_prompt_embeds is None


def test_single_negative_prompt_is_repeated_for_a_prompt_list():
    kwargs = SDXLRequest(
        prompt=["a", "b", "c"], negative_prompt="blurry", prompt_2="oil"
    ).to_pipeline_kwargs()
    assert kwargs["negative_prompt"] == ["blurry"] * 3
    assert kwargs["prompt_2"] == ["oil"] * 3


def test_wire_tensors_decode_to_the_sent_values():
    sent = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4) / 7
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        request = SDXLRequest(prompt="a", height=64, width=64, latents=encode_tensor(sent.to(dtype)))
        assert request.latents.dtype == dtype
        assert torch.equal(request.latents, sent.to(dtype))


def test_handles_may_send_real_tensors_and_the_request_keeps_their_values():
    embeds = torch.randn(2, 77, 96)
    request = SDXLRequest(prompt_embeds=embeds, pooled_prompt_embeds=torch.randn(2, 32))
    # The request holds a detached CPU tensor, not necessarily the object sent: its values are what count.
    assert torch.equal(request.prompt_embeds, embeds)
    assert request.prompt_count == 2


def test_a_python_callable_is_accepted_for_the_callback():
    def callback(pipeline, step, timestep, tensors):
        return tensors

    assert SDXLRequest(prompt="a", callback_on_step_end=callback).callback_on_step_end is callback


def test_the_callback_is_not_in_the_json_schema():
    assert "callback_on_step_end" not in SDXLRequest.model_json_schema()["properties"]


def _param_of(body: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        SDXLRequest.model_validate(body)
    return invalid_request_from(caught.value.errors()).param


GARBAGE_B64 = {"dtype": "float32", "shape": [1], "data": "%%%not-base64%%%"}
SHORT_DATA = {"dtype": "float32", "shape": [2, 2], "data": base64.b64encode(b"\0" * 4).decode()}
INT_TENSOR = {"dtype": "int64", "shape": [1], "data": base64.b64encode(b"\0" * 8).decode()}
HUGE_SHAPE = {"dtype": "float32", "shape": [10**6, 10**6], "data": ""}
NAN_TENSOR = encode_tensor(torch.tensor([math.nan]))

BAD_INPUTS = [
    ("missing-prompt", {}, "prompt"),
    ("prompt-of-1MB", {"prompt": "x" * 1_000_000}, "prompt"),
    ("empty-prompt-list", {"prompt": []}, "prompt"),
    ("prompt-not-text", {"prompt": 5}, "prompt"),
    ("unknown-field", {"prompt": "a", "sharpness": 0.5}, "sharpness"),
    ("width-negative", {"prompt": "a", "width": -8}, "width"),
    ("width-zero", {"prompt": "a", "width": 0}, "width"),
    ("width-100000", {"prompt": "a", "width": 100000}, "width"),
    ("width-not-multiple-of-8", {"prompt": "a", "width": 100}, "width"),
    ("height-not-multiple-of-8", {"prompt": "a", "height": 1001}, "height"),
    ("steps-0", {"prompt": "a", "num_inference_steps": 0}, "num_inference_steps"),
    ("steps-1000000", {"prompt": "a", "num_inference_steps": 1_000_000}, "num_inference_steps"),
    ("images-0", {"prompt": "a", "num_images_per_prompt": 0}, "num_images_per_prompt"),
    ("images-1000", {"prompt": "a", "num_images_per_prompt": 1000}, "num_images_per_prompt"),
    (
        "pixel-budget",
        {"prompt": "a", "height": 2048, "width": 2048, "num_images_per_prompt": 8},
        "num_images_per_prompt",
    ),
    ("guidance-nan", {"prompt": "a", "guidance_scale": math.nan}, "guidance_scale"),
    ("guidance-inf", {"prompt": "a", "guidance_scale": math.inf}, "guidance_scale"),
    ("eta-minus-inf", {"prompt": "a", "eta": -math.inf}, "eta"),
    ("denoising-end-0", {"prompt": "a", "denoising_end": 0}, "denoising_end"),
    ("denoising-end-1.5", {"prompt": "a", "denoising_end": 1.5}, "denoising_end"),
    ("guidance-rescale-negative", {"prompt": "a", "guidance_rescale": -1}, "guidance_rescale"),
    ("crops-wrong-length", {"prompt": "a", "crops_coords_top_left": [1, 2, 3]}, "crops_coords_top_left"),
    ("crops-negative", {"prompt": "a", "crops_coords_top_left": [-1, 0]}, "crops_coords_top_left"),
    ("target-size-zero", {"prompt": "a", "target_size": [0, 1024]}, "target_size"),
    ("negative-target-one-value", {"prompt": "a", "negative_target_size": [512]}, "negative_target_size"),
    ("negative-prompt-list-length", {"prompt": ["a", "b"], "negative_prompt": ["x"]}, "negative_prompt"),
    ("prompt-2-list-length", {"prompt": "a", "prompt_2": ["x", "y"]}, "prompt_2"),
    (
        "prompt-and-embeds",
        {"prompt": "a", "prompt_embeds": wire((1, 77, 96)), "pooled_prompt_embeds": wire((1, 32))},
        "prompt_embeds",
    ),
    ("embeds-without-pooled", {"prompt_embeds": wire((1, 77, 96))}, "pooled_prompt_embeds"),
    (
        "negative-embeds-without-pooled",
        {"prompt": "a", "negative_prompt_embeds": wire((1, 77, 96))},
        "negative_pooled_prompt_embeds",
    ),
    (
        "negative-prompt-and-embeds",
        {
            "prompt": "a",
            "negative_prompt": "x",
            "negative_prompt_embeds": wire((1, 77, 96)),
            "negative_pooled_prompt_embeds": wire((1, 32)),
        },
        "negative_prompt_embeds",
    ),
    (
        "embeds-wrong-rank",
        {"prompt_embeds": wire((77, 96)), "pooled_prompt_embeds": wire((1, 32))},
        "prompt_embeds",
    ),
    ("tensor-garbage-base64", {"prompt": "a", "latents": GARBAGE_B64}, "latents"),
    ("tensor-bytes-disagree-with-shape", {"prompt": "a", "latents": SHORT_DATA}, "latents"),
    ("tensor-int64", {"prompt": "a", "latents": INT_TENSOR}, "latents"),
    ("tensor-object-dtype", {"prompt": "a", "latents": {**INT_TENSOR, "dtype": "object"}}, "latents"),
    ("tensor-10^12-elements", {"prompt": "a", "latents": HUGE_SHAPE}, "latents"),
    ("tensor-nan", {"prompt": "a", "latents": NAN_TENSOR}, "latents"),
    ("tensor-not-an-object", {"prompt": "a", "latents": "abc"}, "latents"),
    (
        "latents-wrong-count",
        {"prompt": "a", "height": 64, "width": 64, "latents": wire((2, 4, 8, 8))},
        "latents",
    ),
    ("callback-over-json", {"prompt": "a", "callback_on_step_end": "print"}, "callback_on_step_end"),
    (
        "callback-input-unknown",
        {"prompt": "a", "callback_on_step_end_tensor_inputs": ["noise"]},
        "callback_on_step_end_tensor_inputs",
    ),
    ("seed-negative", {"prompt": "a", "seed": -1}, "seed"),
    ("seed-too-large", {"prompt": "a", "seed": 2**64}, "seed"),
    ("format-bmp", {"prompt": "a", "output_format": "bmp"}, "output_format"),
    ("scheduler-unknown", {"prompt": "a", "scheduler": "lms"}, "scheduler"),
]


@pytest.mark.parametrize(("body", "param"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_naming_its_field(body, param):
    assert _param_of(body) == param


MODEL_MISMATCHES = [
    (
        "latents-wrong-spatial-size",
        {"prompt": "a", "height": 64, "width": 64, "latents": torch.zeros(1, 4, 16, 8)},
        "latents",
    ),
    (
        "latents-wrong-channels",
        {"prompt": "a", "height": 64, "width": 64, "latents": torch.zeros(1, 3, 8, 8)},
        "latents",
    ),
    (
        "embeds-wrong-width",
        {"prompt_embeds": torch.zeros(1, 77, 95), "pooled_prompt_embeds": torch.zeros(1, 32)},
        "prompt_embeds",
    ),
    (
        "pooled-wrong-width",
        {"prompt_embeds": torch.zeros(1, 77, 96), "pooled_prompt_embeds": torch.zeros(1, 31)},
        "pooled_prompt_embeds",
    ),
    (
        "negative-embeds-wrong-tokens",
        {
            "prompt": "a",
            "negative_prompt_embeds": torch.zeros(1, 80, 96),
            "negative_pooled_prompt_embeds": torch.zeros(1, 32),
        },
        "negative_prompt_embeds",
    ),
    (
        "long-embeds-with-negative-text",
        {
            "prompt_embeds": torch.zeros(1, 154, 96),
            "pooled_prompt_embeds": torch.zeros(1, 32),
            "negative_prompt": "x",
        },
        "negative_prompt",
    ),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in MODEL_MISMATCHES], ids=[c[0] for c in MODEL_MISMATCHES]
)
def test_shapes_the_model_rejects_are_refused_before_any_work(body, param):
    request = SDXLRequest.model_validate(body)
    with pytest.raises(InvalidRequest) as caught:
        request.check_against(SPEC)
    assert caught.value.param == param


def test_a_prompt_as_written_heads_every_images_parameters_in_every_part():
    request = SDXLRequest(
        prompt="a fox,  at dusk", loras=[{"name": "ink", "scale": 0.5}], num_images_per_prompt=3, seed=4
    )
    assert request.as_written("a fox,  at dusk <lora:ink:0.5>") == request  # what it writes anyway
    written = request.as_written("a fox, <lora:ink:0.5> at dusk")
    parts = written.split(2)
    marks = [mark for part in parts for mark in part.output_marks([part.seed], "m")]
    assert [mark.parameters.splitlines()[0] for mark in marks] == ["a fox, <lora:ink:0.5> at dusk"] * 2
    assert request.output_marks([4], "m")[0].parameters.startswith("a fox,  at dusk <lora:ink:0.5>\n")
