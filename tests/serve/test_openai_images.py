"""The official `openai` client, unchanged but for its base URL, generates and edits images through
/v1/images/generations and /v1/images/edits. In-process (the ingress's app, a stub model side): each
OpenAI call reaches the model as the same request as its /v1/sdxl body, answers in OpenAI's shape,
streams OpenAI's events, and bad input is a 422 naming OpenAI's field. On the real graph, end to end:
b64 and url answers equal /v1/sdxl's image for the same seed, streams give latent previews then the
image, and an OpenAI mask repaints what ours would."""

import base64

import httpx
import numpy as np
import openai
import pytest

from leap_ray.serve import openai_routes
from tests.helpers import APP_URL, assert_error, base64_on_loop, pixels, png, stub_image

OURS = {"seed": 5, "num_inference_steps": 4}
RANDOM = np.random.default_rng(2)
PHOTO = png(RANDOM.integers(0, 256, (64, 96, 3), dtype=np.uint8))
HALF = np.arange(96)[None, :].repeat(64, axis=0) < 48  # the left half is edited
EDIT = {"seed": 7, "num_inference_steps": 4, "strength": 0.8}


def photo() -> tuple[str, bytes]:
    return ("photo.png", base64.b64decode(PHOTO))


def openai_mask() -> bytes:
    """OpenAI's mask: an RGBA PNG, transparent where the image is to be edited (the left half)."""
    rgba = np.full((64, 96, 4), 255, dtype=np.uint8)
    rgba[..., 3] = np.where(HALF, 0, 255)
    return base64.b64decode(png(rgba))


OURS_MASK = png(np.where(HALF, 255, 0).astype(np.uint8))  # ours: white is repainted


# In-process: the mapping of OpenAI's fields onto ours, OpenAI's answers, events and errors.


@pytest.fixture
def stub_client(in_process) -> openai.OpenAI:
    http = httpx.Client(transport=in_process.transport)
    return openai.OpenAI(
        base_url=f"{APP_URL}/v1", api_key="not-checked-without-keys", max_retries=0, http_client=http
    )


def as_sdxl(in_process, body: dict) -> object:
    return in_process.model_request("/v1/sdxl", body)


def test_generate_is_the_sdxl_request_of_its_fields(stub_client, in_process):
    result = stub_client.images.generate(model="sdxl", prompt="a red fox", size="96x64", n=2, extra_body=OURS)
    (request,) = in_process.gateway.generated
    body = {"prompt": "a red fox", "width": 96, "height": 64, "num_images_per_prompt": 2, **OURS}
    assert request == as_sdxl(in_process, body)
    assert [base64.b64decode(image.b64_json) for image in result.data] == [stub_image(5), stub_image(6)]
    assert [image.model_extra["seed"] for image in result.data] == [5, 6]
    assert result.size == "96x64" and result.output_format == "png"


def test_b64_json_images_are_encoded_off_the_event_loop(stub_client, monkeypatch):
    on_loop = base64_on_loop(monkeypatch, openai_routes)
    stub_client.images.generate(model="sdxl", prompt="a red fox", size="96x64", n=2, extra_body=OURS)
    assert on_loop == [False, False]


def test_url_images_are_job_outputs_of_the_sdxl_request(stub_client, in_process):
    result = stub_client.images.generate(
        prompt="a red fox", size="96x64", response_format="url", extra_body=OURS
    )
    (image,) = result.data
    assert image.url.startswith(f"{APP_URL}/v1/jobs/") and image.model_extra["seed"] == 5
    assert in_process.http.get(image.url).content == stub_image(5)
    (request,) = in_process.gateway.generated
    assert request == as_sdxl(in_process, {"prompt": "a red fox", "width": 96, "height": 64, **OURS})


def test_a_stream_sends_partial_images_then_the_completed_image(stub_client, in_process):
    events = list(
        stub_client.images.generate(
            prompt="a red fox", size="96x64", stream=True, partial_images=2, extra_body=OURS
        )
    )
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    # 4 steps, 2 partial images: a preview every 2 steps (the stub's preview is its step's image)
    assert in_process.gateway.generated[0].preview_every == 2
    assert [base64.b64decode(event.b64_json) for event in events] == [
        stub_image(2),
        stub_image(4),
        stub_image(5),
    ]


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"size": "big"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"n": 99}, "n"),
        ({"model": "dall-e-3"}, "model"),
        ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps"),
        ({"extra_body": {"no_such_field": 1}}, "no_such_field"),
    ],
)
def test_bad_input_is_a_422_naming_the_openai_field(stub_client, in_process, arguments, param):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        stub_client.images.generate(prompt="a red fox", **arguments)
    assert caught.value.status_code == 422 and caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error" and in_process.gateway.generated == []
    assert caught.value.body["message"].startswith(f"{param}")  # "n: ...", never our num_images_per_prompt


def test_an_edit_without_a_mask_is_img2img_as_the_sdxl_endpoint_does_it(stub_client, in_process):
    result = stub_client.images.edit(model="sdxl", image=photo(), prompt="a castle", extra_body=EDIT)
    (image,) = result.data
    (request,) = in_process.gateway.generated
    assert request == as_sdxl(in_process, {"prompt": "a castle", "image": PHOTO, **EDIT})
    assert request.workflow == "img2img" and base64.b64decode(image.b64_json) == stub_image(7)
    assert result.size == "auto" and image.model_extra["seed"] == 7


def test_an_edit_as_a_url_is_a_job_output_of_the_same_request(stub_client, in_process):
    result = stub_client.images.edit(image=photo(), prompt="a castle", response_format="url", extra_body=EDIT)
    assert in_process.http.get(result.data[0].url).content == stub_image(7)
    (request,) = in_process.gateway.generated
    assert request == as_sdxl(in_process, {"prompt": "a castle", "image": PHOTO, **EDIT})


def test_an_edit_with_an_openai_mask_inpaints_its_transparent_pixels(stub_client, in_process):
    stub_client.images.edit(
        image=photo(), mask=("mask.png", openai_mask()), prompt="a castle", extra_body=EDIT
    )
    (request,) = in_process.gateway.generated
    expected = as_sdxl(in_process, {"prompt": "a castle", "image": PHOTO, "mask_image": OURS_MASK, **EDIT})
    assert request == expected and request.workflow == "inpaint"


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"mask": ("mask.png", base64.b64decode(png(np.zeros((8, 8), dtype=np.uint8))))}, "mask"),
        ({"size": "512x512"}, "size"),
        ({"extra_body": {"strength": 2}}, "strength"),
    ],
    ids=["mask-of-another-size", "size-not-the-image's", "strength-out-of-range"],
)
def test_a_bad_edit_is_a_422_naming_the_openai_field(stub_client, in_process, arguments, param):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        stub_client.images.edit(image=photo(), prompt="x", **arguments)
    assert caught.value.status_code == 422 and caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error" and in_process.gateway.generated == []


def test_an_edit_that_is_not_a_form_is_a_415(in_process):
    response = in_process.http.post("/v1/images/edits", json={"prompt": "x"})
    assert "multipart/form-data" in assert_error(response, 415)["message"]


def test_an_edit_takes_adapters_and_the_refiner_in_extra_body(stub_client, in_process):
    # The client writes nested fields in bracket form (loras[][name], refiner[enabled]); an empty
    # object it leaves out, so the refiner is asked for with {"enabled": True}.
    nested = {"loras": [{"name": "ink", "scale": 0.7}, {"name": "paper"}], "refiner": {"enabled": True}}
    stub_client.images.edit(image=photo(), prompt="a castle", extra_body={**EDIT, **nested})
    (request,) = in_process.gateway.generated
    assert request == as_sdxl(in_process, {"prompt": "a castle", "image": PHOTO, **EDIT, **nested})
    assert [(lora.name, lora.scale) for lora in request.loras] == [("ink", 0.7), ("paper", 1.0)]
    assert request.wants_refiner


def test_an_edit_without_a_mask_repaints_the_images_transparent_pixels(stub_client, in_process):
    rgba = np.concatenate([base_pixels(), np.full((64, 96, 1), 255, dtype=np.uint8)], axis=2)
    rgba[..., 3] = np.where(HALF, 0, 255)  # OpenAI: without a mask, the image's transparency is it
    stub_client.images.edit(
        image=("hole.png", base64.b64decode(png(rgba))), prompt="a castle", extra_body=EDIT
    )
    (request,) = in_process.gateway.generated
    body = {"prompt": "a castle", "image": png(rgba), "mask_image": OURS_MASK, **EDIT}
    assert request == as_sdxl(in_process, body) and request.workflow == "inpaint"


def test_an_edit_streams_openai_edit_events(stub_client, in_process):
    events = list(
        stub_client.images.edit(
            image=photo(), prompt="a castle", stream=True, partial_images=1, extra_body=EDIT
        )
    )
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert base64.b64decode(events[-1].b64_json) == stub_image(7)


def base_pixels() -> np.ndarray:
    return pixels(base64.b64decode(PHOTO)).astype(np.uint8)


# On the real graph: the images themselves, end to end.


@pytest.fixture(scope="module")
def client(graph) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{graph.url}/v1", api_key="not-checked-without-keys", max_retries=0)


@pytest.fixture(scope="module")
def reference(graph) -> bytes:
    body = {"prompt": "a red fox", "height": 64, "width": 96, **OURS}
    response = httpx.post(f"{graph.url}/v1/sdxl", json=body, headers={"Accept": "image/png"}, timeout=120)
    assert response.status_code == 200
    return response.content


def test_b64_json_images_equal_the_sdxl_endpoints_for_the_seed(client, reference):
    result = client.images.generate(model="sdxl", prompt="a red fox", size="96x64", n=2, extra_body=OURS)
    first, second = (pixels(base64.b64decode(image.b64_json)) for image in result.data)
    # two images run as one batch of two: within a step of rounding of the one-image reference
    assert np.abs(first.astype(int) - pixels(reference)).max() <= 2
    assert second.shape == (64, 96, 3) and not np.array_equal(first, second)
    assert [image.model_extra["seed"] for image in result.data] == [5, 6]
    assert result.size == "96x64" and result.output_format == "png"


def test_url_images_are_job_outputs_that_download_as_the_same_image(client, reference):
    result = client.images.generate(prompt="a red fox", size="96x64", response_format="url", extra_body=OURS)
    (image,) = result.data
    assert "/v1/jobs/" in image.url
    assert httpx.get(image.url, timeout=30).content == reference


def test_a_stream_sends_latent_previews_then_the_completed_image(client, reference):
    events = list(
        client.images.generate(
            prompt="a red fox", size="96x64", stream=True, partial_images=2, extra_body=OURS
        )
    )
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    assert pixels(base64.b64decode(events[0].b64_json)).shape == (8, 12, 3)  # a latent preview, 1/8 size
    # The same file: how it travelled (streamed, with previews) is not part of its record.
    assert base64.b64decode(events[-1].b64_json) == reference


def ours(body: dict, graph) -> np.ndarray:
    response = httpx.post(f"{graph.url}/v1/sdxl", json=body, headers={"Accept": "image/png"}, timeout=120)
    assert response.status_code == 200, response.text
    return pixels(response.content)


def test_an_edit_with_an_openai_mask_repaints_its_transparent_pixels(client, graph):
    result = client.images.edit(
        image=photo(), mask=("mask.png", openai_mask()), prompt="a castle", extra_body=EDIT
    )
    expected = ours({"prompt": "a castle", "image": PHOTO, "mask_image": OURS_MASK, **EDIT}, graph)
    assert np.array_equal(pixels(base64.b64decode(result.data[0].b64_json)), expected)
