"""Every bad input a workflow engine might send gets its exact 4xx, naming the field, and never
reaches a model. The whole catalogue runs in-process (the ingress's app, a stub model side): every
check is the ingress's, the model's facts included (the tiny models', as the stub gives them). On the
real graph: one case of each kind through Serve's proxy, with the checks against the loaded model's
own facts, answered exactly as in-process; and the catalogue sent alongside valid requests, which
still get exactly their own results."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import httpx
import numpy as np
import pytest
import soundfile
import torch
from ray import serve

from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest
from leap_ray.testing import hostile_images as hostile
from tests.helpers import assert_error, call, flac_silence, make_app, pixels, wav_bytes, with_total_samples

from .conftest import APP, stats

SMALL = {"height": 64, "width": 64, "num_inference_steps": 2}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def tensor(shape: list[int], dtype: str = "float32", data: str | None = None) -> dict:
    itemsize = {"float32": 4, "float16": 2, "int64": 8, "object": 8}[dtype]
    count = int(np.prod(shape))
    return {
        "dtype": dtype,
        "shape": shape,
        "data": data if data is not None else b64(bytes(count * itemsize)),
    }


# No elements, so within every element limit, but a dimension no tensor can have (torch's reshape
# overflows on it): found by hostile testing, a 500 before.
EMPTY_HUGE_SHAPES = [("zero-beside-2^63", [0, 2**63]), ("zero-by-2^40-by-2^40", [0, 2**40, 2**40])]


def empty_tensor(shape: list[int]) -> dict:
    return {"dtype": "float32", "shape": shape, "data": ""}


def wav(seconds: float, rate: int = 8000) -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return b64(buffer.getvalue())


# Round 3: uploads built to cost the decoder far more than their size (found by hostile testing: 150 s
# of ingress CPU for one 16 MB JPEG, a stalled event loop for a PNG of 1.3 M chunks), refused from
# their structure before a pixel is decoded (EXIF, once the pixels are read but before it is parsed).
HOSTILE_UPLOADS = [
    ("jpeg-of-repeated-scans", hostile.repeated_scan_jpeg_of(256_000)),
    ("jpeg-of-fill-bytes", hostile.padded_jpeg(256_000, b"\xff")),
    ("jpeg-of-empty-comments", hostile.padded_jpeg(256_000, b"\xff\xfe\x00\x02")),
    ("png-of-20000-empty-chunks", hostile.empty_chunk_png(20_000)),
    ("png-of-inflating-chunks", hostile.inflating_chunk_png(256_000)),
    ("png-of-64000-exif-tags", hostile.exif_png(64_000)),
    ("webp-of-many-frames", hostile.many_frame_webp(256_000)),
]
# Cheap rules come before the one decode: this image is never decoded.
KEEPS_NO_STEP = {"strength": 0.1, "num_inference_steps": 5}

SDXL_FLOATS = ["denoising_end", "guidance_scale", "eta", "guidance_rescale"]
MUSICGEN_FLOATS = ["duration", "guidance_scale", "temperature", "top_p"]
NON_FINITE = ["NaN", "Infinity", "-Infinity"]

# (id, path, JSON body or raw text, status, param)
CASES: list[tuple[str, str, object, int, str | None]] = [
    ("malformed-json", "/v1/sdxl", '{"prompt": "a",', 400, None),
    ("unknown-field", "/v1/sdxl", {"prompt": "a", "no_such_field": 0.3}, 422, "no_such_field"),
    ("missing-prompt", "/v1/sdxl", {"width": 64}, 422, "prompt"),
    ("prompt-of-1MB", "/v1/sdxl", {"prompt": "x" * 1_000_000}, 422, "prompt"),
    ("body-not-an-object", "/v1/sdxl", [1, 2, 3], 422, None),
    *[
        (f"sdxl-{field}-{value}", "/v1/sdxl", f'{{"prompt": "a", "{field}": {value}}}', 422, field)
        for field in SDXL_FLOATS
        for value in NON_FINITE
    ],
    *[
        (f"musicgen-{field}-{value}", "/v1/musicgen", f'{{"prompt": "a", "{field}": {value}}}', 422, field)
        for field in MUSICGEN_FLOATS
        for value in NON_FINITE
    ],
    *[
        (f"{side}-{value}", "/v1/sdxl", {"prompt": "a", side: value}, 422, side)
        for side in ("width", "height")
        for value in (-64, 0, 100_000, 100)
    ],
    ("steps-0", "/v1/sdxl", {"prompt": "a", "num_inference_steps": 0}, 422, "num_inference_steps"),
    (
        "steps-1000000",
        "/v1/sdxl",
        {"prompt": "a", "num_inference_steps": 1_000_000},
        422,
        "num_inference_steps",
    ),
    ("images-0", "/v1/sdxl", {"prompt": "a", "num_images_per_prompt": 0}, 422, "num_images_per_prompt"),
    ("images-1000", "/v1/sdxl", {"prompt": "a", "num_images_per_prompt": 1000}, 422, "num_images_per_prompt"),
    ("denoising-end-0", "/v1/sdxl", {"prompt": "a", "denoising_end": 0}, 422, "denoising_end"),
    ("denoising-end-1.5", "/v1/sdxl", {"prompt": "a", "denoising_end": 1.5}, 422, "denoising_end"),
    (
        "guidance-rescale-minus-1",
        "/v1/sdxl",
        {"prompt": "a", "guidance_rescale": -1},
        422,
        "guidance_rescale",
    ),
    (
        "crops-three-values",
        "/v1/sdxl",
        {"prompt": "a", "crops_coords_top_left": [0, 0, 0]},
        422,
        "crops_coords_top_left",
    ),
    (
        "crops-negative",
        "/v1/sdxl",
        {"prompt": "a", "crops_coords_top_left": [-8, 0]},
        422,
        "crops_coords_top_left",
    ),
    ("target-size-one-value", "/v1/sdxl", {"prompt": "a", "target_size": [1024]}, 422, "target_size"),
    (
        "negative-original-size-negative",
        "/v1/sdxl",
        {"prompt": "a", "negative_original_size": [-1, 5]},
        422,
        "negative_original_size",
    ),
    (
        "negative-prompt-list-length",
        "/v1/sdxl",
        {"prompt": ["a", "b"], "negative_prompt": ["c"]},
        422,
        "negative_prompt",
    ),
    (
        "prompt-and-prompt-embeds",
        "/v1/sdxl",
        {"prompt": "a", "prompt_embeds": tensor([1, 77, 96]), "pooled_prompt_embeds": tensor([1, 32])},
        422,
        "prompt_embeds",
    ),
    (
        "prompt-embeds-without-pooled",
        "/v1/sdxl",
        {"prompt_embeds": tensor([1, 77, 96])},
        422,
        "pooled_prompt_embeds",
    ),
    (
        "tensor-garbage-base64",
        "/v1/sdxl",
        {"prompt": "a", "latents": tensor([1], data="@@not base64@@")},
        422,
        "latents",
    ),
    (
        "tensor-bytes-disagree-with-shape",
        "/v1/sdxl",
        {"prompt": "a", "latents": tensor([1, 4, 8, 8], data=b64(b"x"))},
        422,
        "latents",
    ),
    ("tensor-int64", "/v1/sdxl", {"prompt": "a", "latents": tensor([1, 4, 8, 8], "int64")}, 422, "latents"),
    ("tensor-object", "/v1/sdxl", {"prompt": "a", "latents": tensor([1], "object")}, 422, "latents"),
    (
        "tensor-shape-the-model-rejects",
        "/v1/sdxl",
        {"prompt": "a", **SMALL, "latents": tensor([1, 4, 16, 16])},
        422,
        "latents",
    ),
    (
        "embeds-width-the-model-rejects",
        "/v1/sdxl",
        {"prompt_embeds": tensor([1, 77, 95]), "pooled_prompt_embeds": tensor([1, 32]), **SMALL},
        422,
        "prompt_embeds",
    ),
    (
        "tensor-10^12-elements",
        "/v1/sdxl",
        {"prompt": "a", "latents": tensor([10**6, 10**6], data="")},
        422,
        "latents",
    ),
    (
        "callback-over-http",
        "/v1/sdxl",
        {"prompt": "a", "callback_on_step_end": "print"},
        422,
        "callback_on_step_end",
    ),
    (
        "callback-tensor-input-unknown",
        "/v1/sdxl",
        {"prompt": "a", "callback_on_step_end_tensor_inputs": ["noise"]},
        422,
        "callback_on_step_end_tensor_inputs",
    ),
    *[
        (f"duration-{value}", "/v1/musicgen", {"prompt": "a", "duration": value}, 422, "duration")
        for value in (0, -1, 60.5, 61, 3600)
    ],
    ("format-exe", "/v1/musicgen", {"prompt": "a", "format": "exe"}, 422, "format"),
    (
        "melody-not-audio",
        "/v1/musicgen",
        {"prompt": "a", "melody": b64(b"this is not audio at all")},
        422,
        "melody",
    ),
    ("melody-empty", "/v1/musicgen", {"prompt": "a", "melody": ""}, 422, "melody"),
    ("melody-garbage-base64", "/v1/musicgen", {"prompt": "a", "melody": "$$$ not base64 $$$"}, 422, "melody"),
    (
        "melody-too-long",
        "/v1/musicgen",
        {"prompt": "a", "melody": wav(LIMITS.musicgen.max_melody_s + 1)},
        422,
        "melody",
    ),
    # Round 2: hostile melodies, refused from their headers at the ingress (they used to reach, and
    # fail, a whole batch), and bodies that used to get a 500 or stall the ingress.
    *[
        (f"melody-{name}", "/v1/musicgen", {"prompt": "a", "melody": b64(raw)}, 422, "melody")
        for name, raw in [
            ("wav-claiming-2^31-1-hz", wav_bytes(2**31 - 1)),
            ("wav-claiming-1000003-hz", wav_bytes(1_000_003)),
            ("flac-of-one-hour", flac_silence(3600)),
            ("flac-claiming-2^36-frames", with_total_samples(flac_silence(1), 2**36 - 1)),
        ]
    ],
    ("nested-100k-deep", "/v1/sdxl", "[" * 100_000 + "]" * 100_000, 400, None),
    ("integer-of-5000-digits", "/v1/sdxl", '{"prompt": "a", "seed": ' + "9" * 5000 + "}", 400, None),
    ("seed-past-2^53", "/v1/sdxl", {"prompt": "a", "seed": 2**53}, 422, "seed"),
    *[
        (
            f"webhook-url-{name}",
            "/v1/jobs",
            {"service": "sdxl", "input": {"prompt": "a"}, "webhook_url": url},
            422,
            "webhook_url",
        )
        for name, url in [
            ("unclosed-ipv6", "http://[::1"),
            ("port-99999", "http://example.com:99999/"),
            ("port-minus-1", "http://example.com:-1/"),
            ("ipv4-compatible-loopback", "http://[::127.0.0.1]/"),
            ("nat64-loopback", "http://[64:ff9b::7f00:1]/"),
            ("6to4-loopback", "http://[2002:7f00:1::]/"),
        ]
    ],
    *[
        (f"tensor-{name}", "/v1/sdxl", {"prompt": "a", "latents": empty_tensor(shape)}, 422, "latents")
        for name, shape in EMPTY_HUGE_SHAPES
    ],
    *[
        (
            f"job-tensor-{name}",
            "/v1/jobs",
            {"service": "sdxl", "input": {"prompt": "a", "latents": empty_tensor(shape)}},
            422,
            "input.latents",
        )
        for name, shape in EMPTY_HUGE_SHAPES
    ],
    *[
        (
            f"openai-{route}-steps-of-5000-digits-streamed",
            f"/v1/images/{route}",
            {"prompt": "a", "stream": True, "partial_images": 2, "num_inference_steps": "9" * 5000},
            422,
            "num_inference_steps",
        )
        for route in ("generations",)
    ],
    (
        "job-input-invalid",
        "/v1/jobs",
        {"service": "sdxl", "input": {"prompt": "a", "width": 100}},
        422,
        "input.width",
    ),
    *[
        (f"image-{name}", "/v1/sdxl", {"prompt": "a", "image": b64(raw)}, 422, "image")
        for name, raw in HOSTILE_UPLOADS
    ],
    *[
        (
            f"mask-{name}",
            "/v1/sdxl",
            {"prompt": "a", "image": b64(hostile.small_png()), "mask_image": b64(raw)},
            422,
            "mask_image",
        )
        for name, raw in HOSTILE_UPLOADS
    ],
    *[
        (
            f"job-image-{name}",
            "/v1/jobs",
            {"service": "sdxl", "input": {"prompt": "a", "image": b64(raw)}},
            422,
            "input.image",
        )
        for name, raw in HOSTILE_UPLOADS
    ],
    (
        "image-whose-strength-keeps-no-step",
        "/v1/sdxl",
        {"prompt": "a", "image": b64(hostile.largest_png(512)), **KEEPS_NO_STEP},
        422,
        "strength",
    ),
]


class Case(NamedTuple):
    """A request and the error it must get (`code`: checked where given)."""

    name: str
    path: str
    body: bytes | None
    status: int
    param: str | None
    method: str = "POST"
    content_type: str | None = "application/json"
    code: str | None = None

    def send(self, client) -> httpx.Response:
        """Sent through `client` (an httpx client, or the in-process app through `call`)."""
        headers = {"Content-Type": self.content_type} if self.content_type else {}
        if isinstance(client, httpx.Client):
            return client.request(self.method, self.path, content=self.body, headers=headers)
        return call(client, self.method, self.path, content=self.body, headers=headers)


def as_case(case: tuple) -> Case:
    name, path, body, status, param = case
    content = body if isinstance(body, str) else json.dumps(body)
    return Case(name, path, content.encode(), status, param)


def edit_case(name: str, param: str, image: bytes, mask: bytes | None = None, **fields: object) -> Case:
    """An OpenAI edit (multipart/form-data, as the official client sends it) that must get a 422."""
    files = {"image": ("image", image), **({"mask": ("mask", mask)} if mask is not None else {})}
    data = {"prompt": "a", **{key: str(value) for key, value in fields.items()}}
    form = httpx.Request("POST", "http://x", data=data, files=files)
    return Case(name, "/v1/images/edits", form.read(), 422, param, content_type=form.headers["content-type"])


# The edits decoded the image twice before their cheap checks (298 s to a 422 for a hostile JPEG).
EDIT_CASES = [
    *[edit_case(f"edit-image-{name}", "image", raw) for name, raw in HOSTILE_UPLOADS],
    *[edit_case(f"edit-mask-{name}", "mask", hostile.small_png(), raw) for name, raw in HOSTILE_UPLOADS],
    edit_case("edit-whose-strength-keeps-no-step", "strength", hostile.transparent_png(512), **KEEPS_NO_STEP),
]

# What the middleware refuses before a body is read as a request.
MIDDLEWARE_CASES = [
    Case("invalid-utf8", "/v1/sdxl", b'{"prompt": "\xff"}', 400, None, code="invalid_utf8"),
    Case(
        "charset-latin-1",
        "/v1/sdxl",
        b'{"prompt": "a"}',
        415,
        "charset",
        content_type="application/json; charset=latin-1",
        code="charset",
    ),
    Case(
        "form-urlencoded",
        "/v1/sdxl",
        b"prompt=a",
        415,
        None,
        content_type="application/x-www-form-urlencoded",
        code="unsupported_media_type",
    ),
    Case("no-route", "/nowhere", None, 404, None, method="GET", content_type=None),
    Case("put-on-sdxl", "/v1/sdxl", None, 405, None, method="PUT", content_type=None),
]
TABLE = [as_case(case) for case in CASES] + EDIT_CASES + MIDDLEWARE_CASES
# Through Serve's proxy: one case of each kind, and every check against the loaded model's facts.
THROUGH_THE_PROXY = {
    "malformed-json",
    "unknown-field",
    "body-not-an-object",
    "sdxl-guidance_scale-NaN",
    "melody-not-audio",
    "melody-flac-claiming-2^36-frames",
    "nested-100k-deep",
    "webhook-url-nat64-loopback",
    "job-input-invalid",
    "tensor-shape-the-model-rejects",
    "embeds-width-the-model-rejects",
    "image-jpeg-of-repeated-scans",
    "edit-image-png-of-20000-empty-chunks",
    *(case.name for case in MIDDLEWARE_CASES),
}


@pytest.fixture(scope="module")
def stub_app(tmp_path_factory):
    """One in-process app for the whole table: no case may reach its model side."""
    return make_app(tmp_path_factory.mktemp("bad-input"))


@pytest.mark.parametrize("case", TABLE, ids=[case.name for case in TABLE])
def test_bad_input(stub_app, case):
    app, gateway = stub_app
    generated = len(gateway.generated)
    error = assert_error(case.send(app), case.status, case.param)
    assert error["type"] == ("not_found_error" if case.status == 404 else "invalid_request_error")
    assert case.code in (None, error["code"])
    assert len(gateway.generated) == generated


@pytest.fixture(scope="module")
def counts_before(graph) -> dict[str, int]:
    return {name: stats(name)["requests"] for name in ("SDXL", "MusicGen")}


PROXY_CASES = [case for case in TABLE if case.name in THROUGH_THE_PROXY]


@pytest.mark.parametrize("case", PROXY_CASES, ids=[case.name for case in PROXY_CASES])
def test_through_serves_proxy_the_answer_is_the_in_process_apps(client, counts_before, stub_app, case):
    response = case.send(client)
    assert_error(response, case.status, case.param)
    assert response.json() == case.send(stub_app[0]).json()


def test_after_the_proxy_cases_no_replica_saw_a_request_and_a_valid_one_succeeds(client, counts_before):
    assert {name: stats(name)["requests"] for name in ("SDXL", "MusicGen")} == counts_before
    assert client.post("/v1/sdxl", json={"prompt": "fine", **SMALL}).status_code == 200
    assert client.post("/v1/musicgen", json={"prompt": "fine", "duration": 0.5}).status_code == 200
    assert stats("SDXL")["requests"] == counts_before["SDXL"] + 1


def test_the_catalogue_sent_alongside_valid_requests_leaves_them_unchanged(client, graph):
    """One request can never change another's result: valid requests sent in the middle of the whole
    catalogue, of a request for more images than a batch holds, and of handle requests whose callbacks
    raise or return the wrong shape, get exactly what they get alone."""
    valid = [{"prompt": f"valid {i}", "seed": 100 + i, **SMALL} for i in range(4)]
    music = {"prompt": "valid", "duration": 0.5, "seed": 7}
    alone = [client.post("/v1/sdxl", json=body).json()["images"][0]["data"] for body in valid]
    music_alone = client.post("/v1/musicgen", json=music).json()["audio"]
    handle = serve.get_app_handle(APP)

    def raising(pipeline, step, timestep, tensors):
        raise RuntimeError("a user's callback fails")

    def wrong_shape(pipeline, step, timestep, tensors):
        return {"latents": torch.zeros(3, 3)}

    def send(case: Case) -> int:
        return case.send(client).status_code

    big = {"prompt": ["x", "y", "z"], "num_images_per_prompt": 3, "seed": 1, **SMALL}  # 9 images, batch 8
    with ThreadPoolExecutor(16) as pool:
        bad = [pool.submit(send, case) for case in TABLE]
        callbacks = [
            handle.sdxl.remote({"prompt": "cb", "seed": 5, "callback_on_step_end": callback, **SMALL})
            for callback in (raising, wrong_shape)
        ]
        oversized = pool.submit(client.post, "/v1/sdxl", json=big)
        sdxl = [pool.submit(client.post, "/v1/sdxl", json=body) for body in valid]
        track = pool.submit(client.post, "/v1/musicgen", json=music)
        assert [future.result() for future in bad] == [case.status for case in TABLE]
        for response in callbacks:
            with pytest.raises(InvalidRequest) as caught:
                response.result()
            assert caught.value.param == "callback_on_step_end"
        for response, image_alone in zip(sdxl, alone, strict=True):
            together = pixels(base64.b64decode(response.result().json()["images"][0]["data"]))
            assert np.abs(together - pixels(base64.b64decode(image_alone))).max() <= 1  # 8-bit rounding
        assert track.result().json()["audio"] == music_alone
        assert [image["seed"] for image in oversized.result().json()["images"]] == list(range(1, 10))
