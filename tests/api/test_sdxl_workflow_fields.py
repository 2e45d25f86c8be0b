"""The SDXL workflow fields, validated before any model work: uploaded images within bounds, masks of
the image's size, strength, adapters and the refiner's options; OpenAI's mask rule."""

import base64
import inspect
import io

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from leap_ray.api.images import decode_image, open_image
from leap_ray.api.openai_images import OpenAIMask
from leap_ray.api.sdxl import SDXLModelSpec, SDXLRequest
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest, invalid_request_from
from tests.helpers import refused_sdxl as refused

SPEC = SDXLModelSpec(
    latent_channels=4, vae_scale_factor=8, text_embed_width=96, pooled_embed_width=32, text_tokens=77
)


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


PHOTO = base64.b64encode(encoded(Image.new("RGB", (100, 72), "red"))).decode()


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_read_as_base64_or_data_uris(image_format):
    raw = encoded(Image.new("RGB", (64, 64), "blue"), image_format)
    for value in (base64.b64encode(raw).decode(), f"data:image/x;base64,{base64.b64encode(raw).decode()}"):
        request = SDXLRequest(prompt="x", image=value)
        assert (request.image.mode, request.image.size, request.workflow) == ("RGB", (64, 64), "img2img")


def test_the_size_is_the_images_rounded_down_to_a_multiple_of_8():
    request = SDXLRequest(prompt="x", image=PHOTO)
    assert (request.width, request.height) == (96, 72)
    assert request.effective_strength() == 0.3  # diffusers' img2img default


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(encoded(Image.new("RGB", (64, 64)), "GIF")).decode(), "not an image in a format"),
        (base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode(), "not an image in a format"),
        ("not base64!", "not valid base64"),
        ("data:image/png,raw", "must be base64-encoded"),
        (12, "must be a base64 string"),
    ],
    ids=["gif", "truncated-png", "not-base64", "data-uri-without-base64", "a-number"],
)
def test_what_is_not_an_image_is_refused_naming_image(value, message):
    error = refused(image=value)
    assert error.param == "image" and message in error.message


def test_an_image_over_the_byte_limit_is_refused_before_decoding():
    too_big = "A" * (LIMITS.sdxl.max_image_bytes * 4 // 3 + 2048)
    assert "larger than the limit" in refused(image=too_big).message


def test_an_image_larger_than_max_size_a_side_is_refused_from_its_header():
    # A 1-bit PNG of 3000 × 8 pixels is tiny in bytes; its header says it is too wide.
    wide = base64.b64encode(encoded(Image.new("1", (LIMITS.sdxl.max_size + 8, 8)))).decode()
    error = refused(image=wide)
    assert error.param == "image" and "pixels a side" in error.message


def test_an_image_smaller_than_min_size_is_refused():
    tiny = base64.b64encode(encoded(Image.new("RGB", (40, 80)))).decode()
    assert refused(image=tiny).param == "image"


def test_the_mask_is_read_in_grey_and_must_match_the_image():
    mask = base64.b64encode(encoded(Image.new("RGB", (100, 72), "white"))).decode()
    request = SDXLRequest(prompt="x", image=PHOTO, mask_image=mask)
    assert (request.mask_image.mode, request.workflow, request.effective_strength()) == (
        "L",
        "inpaint",
        0.9999,
    )
    other = base64.b64encode(encoded(Image.new("L", (96, 72)))).decode()
    assert refused(image=PHOTO, mask_image=other).param == "mask_image"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"strength": 0.5}, "strength"),
        ({"mask_image": PHOTO}, "mask_image"),
        ({"image": PHOTO, "strength": 0}, "strength"),
        ({"image": PHOTO, "strength": 1.01}, "strength"),
        ({"image": PHOTO, "strength": 0.1, "num_inference_steps": 5}, "strength"),
        ({"image": PHOTO, "width": 100}, "width"),
        ({"image": PHOTO, "latents": {"dtype": "float32", "shape": [1], "data": "AAAAAA=="}}, "latents"),
        ({"loras": [{"name": "a"}, {"name": "a", "scale": 0.5}]}, "loras"),
        ({"loras": [{"name": "a", "scale": 4.5}]}, "loras"),
        ({"loras": [{"name": str(i)} for i in range(LIMITS.sdxl.max_loras + 1)]}, "loras"),
        ({"refiner": {"denoising_start": 1}}, "refiner"),
        ({"refiner": {"aesthetic_score": -1}}, "refiner"),
    ],
    ids=[
        "strength-without-image",
        "mask-without-image",
        "strength-0",
        "strength-over-1",
        "strength-keeps-no-step",
        "width-not-the-images",
        "latents-and-an-image",
        "an-adapter-twice",
        "scale-out-of-range",
        "too-many-adapters",
        "refiner-start-1",
        "negative-aesthetic-score",
    ],
)
def test_bad_workflow_fields_are_refused_naming_the_field(fields, param):
    assert refused(**fields).param == param


def test_the_refiner_needs_text_prompts():
    embeds = {"dtype": "float32", "shape": [1, 77, 96], "data": base64.b64encode(bytes(4 * 77 * 96)).decode()}
    pooled = {"dtype": "float32", "shape": [1, 32], "data": base64.b64encode(bytes(4 * 32)).decode()}
    with pytest.raises(ValidationError) as caught:
        SDXLRequest(prompt_embeds=embeds, pooled_prompt_embeds=pooled, refiner={})
    assert invalid_request_from(caught.value.errors()).param == "refiner"


def test_the_refiner_hands_off_at_denoising_end_or_its_own_start():
    request = SDXLRequest(prompt="x", refiner={"aesthetic_score": 7})
    assert (request.denoising_end, request.refiner_kwargs()["denoising_start"]) == (0.8, 0.8)
    own = SDXLRequest(
        prompt="x", denoising_end=0.6, refiner={"denoising_start": 0.7, "num_inference_steps": 9}
    )
    kwargs = own.refiner_kwargs()
    assert (kwargs["denoising_start"], kwargs["num_inference_steps"], kwargs["aesthetic_score"]) == (
        0.7,
        9,
        6.0,
    )
    assert not SDXLRequest(prompt="x", refiner={"enabled": False}).wants_refiner
    alone = SDXLRequest(prompt="x", refiner={"denoising_start": 0.6})
    assert alone.denoising_end == alone.refiner_kwargs()["denoising_start"] == 0.6  # one hand-off point
    assert refused(denoising_end=1.0, refiner={}).param == "denoising_end"  # nothing left to refine


def test_the_graph_must_offer_the_refiner_and_the_adapters():
    without = SDXLModelSpec(**{**SPEC.__dict__, "refiner": False})  # a graph without a refiner
    for fields, param in (({"refiner": {}}, "refiner"), ({"loras": [{"name": "ink"}]}, "loras")):
        with pytest.raises(InvalidRequest) as caught:
            SDXLRequest(prompt="x", **fields).check_against(without)
        assert caught.value.param == param
    offered = SDXLModelSpec(**{**SPEC.__dict__, "refiner": True, "loras": ("ink",)})
    SDXLRequest(prompt="x", refiner={}, loras=[{"name": "ink"}]).check_against(offered)
    # An engine alone does not know the graph: it hands a refiner's request back as latents.
    assert SPEC.refiner is None
    SDXLRequest(prompt="x", refiner={}).check_against(SPEC)


def test_the_adapter_set_names_the_adapters_not_their_scales():
    request = SDXLRequest(prompt="x", loras=[{"name": "paper", "scale": 0.2}, {"name": "ink"}])
    assert request.adapter_set() == "ink+paper"
    assert request.lora_scales() == (("paper", 0.2), ("ink", 1.0))
    assert SDXLRequest(prompt="x").adapter_set() == ""
    assert SDXLRequest(prompt="x", loras=None).loras == []  # as clients sending every field write "none"


def test_a_request_with_images_writes_them_back_as_png_data_uris():
    dumped = SDXLRequest(prompt="x", image=PHOTO).model_dump(mode="json")
    assert dumped["image"].startswith("data:image/png;base64,")
    assert SDXLRequest.model_validate(dumped).image.size == (100, 72)


def openai_mask(raw: bytes) -> Image.Image:
    return OpenAIMask(open_image(raw, LIMITS.sdxl.max_image_bytes, LIMITS.sdxl.max_size)).decode("L")


def test_openai_masks_repaint_their_transparent_pixels_or_are_read_as_ours():
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[:, :4, 3] = 0  # transparent on the left: edited
    mask = np.asarray(openai_mask(encoded(Image.fromarray(rgba))))
    assert (mask[:, :4] == 255).all() and (mask[:, 4:] == 0).all()
    grey = np.zeros((8, 8), dtype=np.uint8)
    grey[:, 6:] = 255  # no transparency: white is repainted, as ours
    assert np.array_equal(np.asarray(openai_mask(encoded(Image.fromarray(grey)))), grey)


def test_a_pil_image_through_a_handle_is_checked_too():
    assert decode_image(Image.new("RGBA", (64, 64)), 1000, 64, "RGB").mode == "RGB"
    with pytest.raises(ValueError, match="pixels a side"):
        decode_image(Image.new("RGB", (65, 8)), 1000, 64, "RGB")


def test_16_bit_and_float_images_are_refused_rather_than_clipped():
    wide = np.full((64, 64), 40_000, dtype=np.uint16)
    error = refused(image=base64.b64encode(encoded(Image.fromarray(wide))).decode())
    assert error.param == "image" and "8 bits" in error.message


def test_a_default_strength_that_keeps_no_step_names_the_steps():
    mask = base64.b64encode(encoded(Image.new("L", (100, 72)))).decode()
    assert refused(image=PHOTO, mask_image=mask, num_inference_steps=1).param == "num_inference_steps"


def test_wrapped_or_unpadded_base64_is_read():
    raw = base64.b64encode(encoded(Image.new("RGB", (64, 64), "green"))).decode()
    wrapped = "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))  # as `base64 photo.png` writes it
    assert SDXLRequest(prompt="x", image=wrapped).image.size == (64, 64)
    assert SDXLRequest(prompt="x", image=raw.rstrip("=")).image.size == (64, 64)


def test_a_photo_is_turned_as_its_exif_orientation_says():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: stored 96 wide and 64 high, shown 64 wide and 96 high
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64)).save(buffer, format="JPEG", exif=exif)
    request = SDXLRequest(prompt="x", image=base64.b64encode(buffer.getvalue()).decode())
    assert (request.width, request.height) == (64, 96)


def test_every_part_of_a_split_inpainting_encodes_the_image_with_image_0s_seed():
    mask = base64.b64encode(encoded(Image.new("L", (100, 72)))).decode()
    whole = SDXLRequest(prompt="x", image=PHOTO, mask_image=mask, num_images_per_prompt=4, seed=100)
    parts = whole.split(3)
    assert [(part.seed, part.image_encoding_seed) for part in parts] == [(100, None), (103, 100)]
    # A part split again (a refiner's smaller batches) still names the whole request's image 0.
    assert [part.image_encoding_seed for part in parts[0].split(2)] == [None, 100]
    later = whole.model_copy(update={"num_images_per_prompt": 6}).split(4)[1]  # images 4 and 5
    assert [part.image_encoding_seed for part in later.split(1)] == [100, 100]


WORKFLOW_PIPELINES = {
    "text2img": "StableDiffusionXLPipeline",
    "img2img": "StableDiffusionXLImg2ImgPipeline",
    "inpaint": "StableDiffusionXLInpaintPipeline",
}


@pytest.mark.parametrize("workflow", list(WORKFLOW_PIPELINES))
def test_each_workflows_defaults_are_its_diffusers_pipelines(workflow):
    # Found by hostile testing: inpainting took text2img's guidance 5.0, diffusers' inpainting 7.5.
    import diffusers

    images = {
        "text2img": {},
        "img2img": {"image": encoded(Image.new("RGB", (64, 64)))},
        "inpaint": {
            "image": encoded(Image.new("RGB", (64, 64))),
            "mask_image": encoded(Image.new("L", (64, 64))),
        },
    }[workflow]
    request = SDXLRequest(
        prompt="a", **{name: base64.b64encode(data).decode() for name, data in images.items()}
    )
    assert request.workflow == workflow
    call = inspect.signature(getattr(diffusers, WORKFLOW_PIPELINES[workflow]).__call__).parameters
    compared = [
        name
        for name, parameter in call.items()
        if name in SDXLRequest.model_fields
        and parameter.default is not None
        and parameter.default != parameter.empty
    ]
    assert "guidance_scale" in compared and "num_inference_steps" in compared
    for name in compared:
        ours = request.effective_strength() if name == "strength" else getattr(request, name)
        assert ours == call[name].default, name
