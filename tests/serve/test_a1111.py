"""The AUTOMATIC1111 client `webuiapi`, unchanged but for its base URL, generates through
/sdapi/v1/txt2img and /sdapi/v1/img2img and reads the endpoints it probes. In-process (the ingress's
app served by uvicorn, a stub model side): each A1111 call reaches the model as the same request as
its /v1/sdxl body, answers in A1111's shape (images, parameters, info with every seed), and what
cannot be honoured is a 422 naming A1111's field. On the real graph: A1111's txt2img and img2img
images equal /v1/sdxl's for the same seed and parameters."""

import base64
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageFilter, ImageOps

from leap_ray.api.marks import read_marks
from leap_ray.serve import a1111_routes
from leap_ray.serve.outputs import OutputMarker
from tests.helpers import StubGateway, base64_on_loop, make_app, pixels, png, served, stub_image

RANDOM = np.random.default_rng(3)
PHOTO = png(RANDOM.integers(0, 256, (64, 96, 3), dtype=np.uint8))
MASK = png(np.where(np.arange(96)[None, :].repeat(64, axis=0) < 48, 255, 0).astype(np.uint8))
SMALL = {"seed": 5, "steps": 4, "width": 96, "height": 64, "cfg_scale": 6.5}
# The same request in /v1/sdxl's fields (webuiapi's default sampler is "Euler a").
OURS = {"seed": 5, "num_inference_steps": 4, "width": 96, "height": 64, "guidance_scale": 6.5}


def image_of(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


class A1111:
    """webuiapi against the in-process app, and a plain HTTP client to the same URL."""

    def __init__(self, url: str, gateway: StubGateway) -> None:
        self.api = webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1")
        self.http = httpx.Client(base_url=url, timeout=60)
        self.gateway = gateway

    def sdxl(self, body: dict) -> object:
        """What the model side gets of a /v1/sdxl body: what the A1111 request must equal."""
        response = self.http.post("/v1/sdxl", json=body)
        assert response.status_code == 200, response.text
        return self.gateway.generated.pop()

    def refused(self, call: object, **arguments: object) -> dict:
        """The error of a webuiapi call that must fail with a 422 (webuiapi raises its status and body)."""
        with pytest.raises(RuntimeError) as caught:
            call(**arguments)
        status, text = caught.value.args
        assert status == 422, text
        assert self.gateway.generated == []
        return json.loads(text)["error"]


@pytest.fixture
def a1111(tmp_path) -> Iterator[A1111]:
    app, gateway = make_app(tmp_path)
    with served(app) as url:
        client = A1111(url, gateway)
        yield client
        client.http.close()


def test_txt2img_is_the_sdxl_request_of_its_fields(a1111):
    result = a1111.api.txt2img(prompt="a red fox", negative_prompt="blurry", **SMALL)
    (request,) = a1111.gateway.generated
    expected = {"prompt": "a red fox", "negative_prompt": "blurry", "scheduler": "euler_ancestral", **OURS}
    assert request == a1111.sdxl(expected)
    assert [base64.b64decode(image) for image in result.json["images"]] == [stub_image(5)]
    assert result.info["seed"] == 5 and result.info["all_seeds"] == [5]
    assert result.info["sampler_name"] == "Euler a" and result.info["width"] == 96
    assert result.info["infotexts"] == [
        "a red fox\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 6.5, Seed: 5, "
        "Size: 96x64, Model: sdxl"
    ]  # unmarked images (the stub's): what the images' marks would say, the model by its title
    assert result.parameters["prompt"] == "a red fox" and result.parameters["enable_hr"] is False


def test_batch_size_times_n_iter_images_take_consecutive_seeds(a1111):
    result = a1111.api.txt2img(prompt="a red fox", batch_size=2, n_iter=3, **{**SMALL, "seed": 10})
    (request,) = a1111.gateway.generated
    assert request.num_images_per_prompt == 6 and request.seed == 10
    assert result.info["all_seeds"] == list(range(10, 16)) and len(result.info["infotexts"]) == 6
    assert [base64.b64decode(image) for image in result.json["images"]] == [
        stub_image(s) for s in range(10, 16)
    ]


def test_each_images_parameters_chunk_is_its_infotext_with_the_prompt_as_written(a1111):
    a1111.gateway.marker = OutputMarker("stabilityai/stable-diffusion-xl-base-1.0")
    prompt = "a fox, <lora:ink:0.5> at dusk"
    result = a1111.api.txt2img(prompt=prompt, sampler_name="DPM++ 2M", batch_size=2, **{**SMALL, "seed": 8})
    chunks = [read_marks(base64.b64decode(image))["parameters"] for image in result.json["images"]]
    assert chunks == result.info["infotexts"] and len(chunks) == 2
    assert chunks[1] == (
        "a fox, <lora:ink:0.5> at dusk\nSteps: 4, Sampler: DPM++ 2M, CFG scale: 6.5, Seed: 9, "
        "Size: 96x64, Model: stabilityai/stable-diffusion-xl-base-1.0"
    )
    assert a1111.gateway.generated[0].lora_scales() == (("ink", 0.5),)


def test_info_has_every_key_a1111_1_10_sends(a1111):
    info = a1111.api.txt2img(prompt="a red fox", **SMALL).info
    unknown = {"sd_model_hash", "sd_vae_name", "sd_vae_hash", "face_restoration_model"}
    assert {key: info[key] for key in unknown} == dict.fromkeys(unknown)
    assert info["seed_resize_from_w"] == info["seed_resize_from_h"] == -1
    assert len(info["job_timestamp"]) == 14 and info["job_timestamp"].isdigit()
    assert info["job_timestamp"][:8] == time.strftime("%Y%m%d")


def test_the_answer_is_encoded_off_the_event_loop(a1111, monkeypatch):
    on_loop = base64_on_loop(monkeypatch, a1111_routes)
    a1111.api.txt2img(prompt="a red fox", batch_size=2, **SMALL)
    assert on_loop == [False, False]


def test_seed_minus_one_is_drawn_and_reported(a1111):
    result = a1111.api.txt2img(prompt="a red fox", batch_size=2, **{**SMALL, "seed": -1})
    (request,) = a1111.gateway.generated
    assert (
        result.info["all_seeds"] == [request.seed, request.seed + 1] and result.info["seed"] == request.seed
    )


def test_an_empty_negative_prompt_is_none_as_a1111_zeroes_it_for_sdxl(a1111):
    a1111.api.txt2img(prompt="a red fox", **SMALL)
    (request,) = a1111.gateway.generated
    assert request.negative_prompt is None


@pytest.mark.parametrize(
    ("sampler", "ours"),
    [
        ("Euler a", "euler_ancestral"),
        ("Euler", "euler"),
        ("k_euler", "euler"),
        ("DPM++ 2M", "dpmpp_2m"),
        ("DDIM", "ddim"),
    ],
)
def test_samplers_map_onto_our_schedulers(a1111, sampler, ours):
    result = a1111.api.txt2img(prompt="x", sampler_name=sampler, **SMALL)
    assert a1111.gateway.generated[0].scheduler == ours
    assert result.info["sampler_name"] in (sampler, "Euler")


def test_without_sampler_name_sampler_index_is_read_then_a1111s_default_euler(a1111):
    body = {"prompt": "x", "steps": 4, "width": 64, "height": 64}
    assert a1111.http.post("/sdapi/v1/txt2img", json={**body, "sampler_index": "DDIM"}).status_code == 200
    assert a1111.http.post("/sdapi/v1/txt2img", json=body).status_code == 200
    assert [request.scheduler for request in a1111.gateway.generated] == ["ddim", "euler"]


def test_ddim_takes_eta_and_euler_a_only_its_own(a1111):
    a1111.api.txt2img(prompt="x", sampler_name="DDIM", eta=0.3, **SMALL)
    assert a1111.gateway.generated.pop().eta == 0.3
    error = a1111.refused(a1111.api.txt2img, prompt="x", sampler_name="Euler a", eta=0.5, **SMALL)
    assert error["param"] == "eta"


@pytest.mark.parametrize("sampler", ["DPM++ 2M Karras", "UniPC", "Heun", "LMS", "DPM2", "DPM++ SDE"])
def test_a_sampler_we_do_not_run_is_a_422_naming_sampler_name(a1111, sampler):
    error = a1111.refused(a1111.api.txt2img, prompt="x", sampler_name=sampler, **SMALL)
    assert error["param"] == "sampler_name" and "Euler a" in error["message"]


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"enable_hr": True}, "enable_hr"),
        ({"restore_faces": True}, "restore_faces"),
        ({"tiling": True}, "tiling"),
        ({"subseed_strength": 0.5}, "subseed_strength"),
        ({"seed_resize_from_h": 512}, "seed_resize_from_h"),
        ({"styles": ["cinematic"]}, "styles"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}}, "alwayson_scripts"),
        ({"scheduler": "karras"}, "scheduler"),
        ({"s_churn": 1.0}, "s_churn"),
        ({"s_noise": 0.9}, "s_noise"),
        ({"override_settings": {"sd_vae": "other.safetensors"}}, "override_settings"),
        ({"firstphase_width": 256}, "firstphase_width"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_what_cannot_be_honoured_is_a_422_naming_the_field(a1111, arguments, param):
    error = a1111.refused(a1111.api.txt2img, prompt="x", **{**SMALL, **arguments})
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 3, "n_iter": 3}, "batch_size"),
        ({"cfg_scale": 1e9}, "cfg_scale"),
        ({"width": 100}, "width"),
        ({"seed": -7}, "seed"),
        ({"prompt": "x <lora:no-such:0.5>"}, "prompt"),
    ],
    ids=["steps", "too-many-images", "cfg_scale", "width-not-multiple-of-8", "seed", "unknown-lora"],
)
def test_a_bad_value_is_a_422_naming_the_a1111_field(a1111, arguments, param):
    error = a1111.refused(a1111.api.txt2img, **{"prompt": "x", **SMALL, **arguments})
    assert error["param"] == param and error["message"].startswith(f"{param}: ")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"batch_size": 100, "n_iter": 100},
            "batch_size: Input should be less than or equal to 8 "
            "(the images in all: batch_size × n_iter = 100 × 100 = 10000)",
        ),
        ({"batch_size": 9}, "batch_size: Input should be less than or equal to 8"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"prompt": "a fox <lora:ink:nan>"}, "prompt: <lora:ink:nan> has no finite number for a scale"),
        ({"prompt": "a fox <lora:ink:inf>"}, "prompt: <lora:ink:inf> has no finite number for a scale"),
        (
            {"prompt": "a <lora:paper> fox <lora:ink:99>"},
            "prompt: <lora:ink:99> scale: Input should be less than or equal to 4",
        ),
    ],
    ids=["batch-times-n-iter", "batch-size", "steps", "lora-nan", "lora-inf", "lora-scale"],
)
def test_an_errors_message_names_the_a1111_field_as_its_param_does(a1111, arguments, message):
    error = a1111.refused(a1111.api.txt2img, **{"prompt": "x", **SMALL, **arguments})
    assert error["message"] == message and error["param"] == message.partition(":")[0]


def test_a_field_a1111_does_not_have_is_a_422_naming_it(a1111):
    response = a1111.http.post("/sdapi/v1/txt2img", json={"prompt": "x", "num_inference_steps": 4})
    assert response.status_code == 422 and response.json()["error"]["param"] == "num_inference_steps"


def test_lora_tags_in_the_prompt_apply_our_adapters(a1111):
    a1111.api.txt2img(prompt="a red fox <lora:ink:0.5><lora:paper>", **SMALL)
    body = {"prompt": "a red fox <lora:ink:0.5>", "disable_extra_networks": True, **SMALL}
    assert a1111.http.post("/sdapi/v1/txt2img", json=body).status_code == 200  # not a webuiapi argument
    tagged, disabled = a1111.gateway.generated
    assert tagged.prompt == "a red fox " and tagged.lora_scales() == (("ink", 0.5), ("paper", 1.0))
    assert disabled.prompt == "a red fox " and disabled.loras == []


def test_send_images_false_answers_without_images(a1111):
    result = a1111.api.txt2img(prompt="x", send_images=False, **SMALL)
    assert result.json["images"] == [] and result.info["all_seeds"] == [5]


def test_img2img_is_the_sdxl_request_of_its_fields(a1111):
    result = a1111.api.img2img(images=[image_of(PHOTO)], prompt="a castle", denoising_strength=0.6, **SMALL)
    (request,) = a1111.gateway.generated
    expected = {"prompt": "a castle", "image": PHOTO, "strength": 0.6, "scheduler": "euler_ancestral", **OURS}
    assert request == a1111.sdxl(expected) and request.workflow == "img2img"
    assert (
        result.info["denoising_strength"] == 0.6 and "Denoising strength: 0.6" in result.info["infotexts"][0]
    )
    assert result.parameters["init_images"] is None  # echoed only with include_init_images


@pytest.mark.parametrize(
    ("resize_mode", "resized"),
    [
        (0, lambda image: image.resize((96, 64), Image.Resampling.LANCZOS)),
        (1, lambda image: ImageOps.fit(image, (96, 64), Image.Resampling.LANCZOS)),
    ],
    ids=["just-resize", "crop-and-resize"],
)
def test_img2img_resizes_the_image_to_width_by_height_as_a1111(a1111, resize_mode, resized):
    small = image_of(png(RANDOM.integers(0, 256, (40, 40, 3), dtype=np.uint8))).convert("RGB")
    a1111.api.img2img(images=[small], prompt="a castle", resize_mode=resize_mode, **SMALL)
    (request,) = a1111.gateway.generated
    assert request.image.size == (96, 64) and request.image == resized(small)


def test_an_image_with_transparency_is_flattened_onto_white(a1111):
    rgba = np.zeros((64, 96, 4), dtype=np.uint8)  # transparent black everywhere
    a1111.api.img2img(images=[image_of(png(rgba))], prompt="a castle", **SMALL)
    assert np.all(np.asarray(a1111.gateway.generated[0].image) == 255)


def test_a_mask_inpaints_the_whole_picture_as_the_sdxl_endpoint_does(a1111):
    inpaint = {"inpaint_full_res": False, "inpainting_fill": 1, "mask_blur": 0}
    a1111.api.img2img(
        images=[image_of(PHOTO)],
        mask_image=image_of(MASK),
        prompt="a castle",
        denoising_strength=0.8,
        **inpaint,
        **SMALL,
    )
    (request,) = a1111.gateway.generated
    body = {
        "prompt": "a castle",
        "image": PHOTO,
        "mask_image": MASK,
        "strength": 0.8,
        "scheduler": "euler_ancestral",
    }
    assert request == a1111.sdxl({**body, **OURS}) and request.workflow == "inpaint"


def test_the_mask_is_inverted_and_blurred_as_asked(a1111):
    inpaint = {"inpaint_full_res": False, "inpainting_fill": 1, "mask_blur": 3, "inpainting_mask_invert": 1}
    a1111.api.img2img(images=[image_of(PHOTO)], mask_image=image_of(MASK), prompt="x", **inpaint, **SMALL)
    expected = ImageOps.invert(image_of(MASK).convert("L")).filter(ImageFilter.GaussianBlur((3, 3)))
    assert a1111.gateway.generated[0].mask_image == expected


def test_a_transparent_masks_opaque_pixels_are_repainted(a1111):
    rgba = np.zeros((64, 96, 4), dtype=np.uint8)
    rgba[:, :48, 3] = 255  # opaque left half
    inpaint = {"inpaint_full_res": False, "inpainting_fill": 1, "mask_blur": 0}
    a1111.api.img2img(
        images=[image_of(PHOTO)], mask_image=image_of(png(rgba)), prompt="x", **inpaint, **SMALL
    )
    assert a1111.gateway.generated[0].mask_image == image_of(MASK).convert("L")


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({}, "inpaint_full_res"),  # webuiapi's defaults: only-masked inpainting
        ({"inpaint_full_res": False}, "inpainting_fill"),  # A1111's default fill
        ({"inpaint_full_res": False, "inpainting_fill": 2}, "inpainting_fill"),
    ],
    ids=["only-masked", "fill", "latent-noise"],
)
def test_inpainting_options_we_cannot_honour_are_refused(a1111, arguments, param):
    error = a1111.refused(
        a1111.api.img2img,
        images=[image_of(PHOTO)],
        mask_image=image_of(MASK),
        prompt="x",
        **arguments,
        **SMALL,
    )
    assert error["param"] == param


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"images": []}, "init_images"),
        ({"resize_mode": 2, "width": 128}, "resize_mode"),
        ({"denoising_strength": 0}, "denoising_strength"),
        ({"initial_noise_multiplier": 0.5}, "initial_noise_multiplier"),
    ],
    ids=["no-image", "resize-and-fill", "zero-strength", "noise-multiplier"],
)
def test_a_bad_img2img_is_a_422_naming_the_a1111_field(a1111, arguments, param):
    error = a1111.refused(
        a1111.api.img2img, **{"images": [image_of(PHOTO)], "prompt": "x", **SMALL, **arguments}
    )
    assert error["param"] == param and error["message"].startswith(f"{param}: ")


def test_an_init_image_that_is_not_an_image_is_a_422_naming_init_images(a1111):
    body = {"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"], "steps": 4, "width": 96, "height": 64}
    response = a1111.http.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "init_images"


def test_the_probes_a_tool_makes_answer_as_a1111s(a1111):
    api = a1111.api
    assert api.util_get_model_names() == ["sdxl"] and api.util_get_current_model() == "sdxl"
    assert api.util_get_sampler_names() == sorted(["Euler a", "Euler", "DPM++ 2M", "DDIM"])
    assert api.util_get_scheduler_names() == ["automatic"]
    assert [lora["name"] for lora in api.get_loras()] == ["ink", "paper"]
    assert [upscaler["name"] for upscaler in api.get_upscalers()] == ["None"]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    api.util_set_model("sdxl")  # sets the one checkpoint: accepted
    assert api.get_options()["sd_model_checkpoint"] == "sdxl"


def test_options_other_than_ours_are_a_422_naming_the_option(a1111):
    assert a1111.api.set_options({"sd_model_checkpoint": "sdxl"}) is None
    response = a1111.http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "v1-5-pruned.ckpt"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "sd_model_checkpoint"
    response = a1111.http.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2})
    assert response.status_code == 422 and response.json()["error"]["param"] == "CLIP_stop_at_last_layers"


def test_progress_is_idle_or_counts_the_generations_running(a1111):
    idle = a1111.http.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
    assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0
    a1111.api.util_wait_for_ready(check_interval=0.01)  # returns at once when idle
    a1111.gateway.hold_s = 1.0
    worker = threading.Thread(target=lambda: a1111.api.txt2img(prompt="x", **SMALL))
    worker.start()
    deadline = time.monotonic() + 10
    while (state := a1111.api.get_progress()["state"])["job_count"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state["job_count"] == 1 and state["job"] == "txt2img"
    worker.join()
    assert a1111.api.get_progress()["state"]["job_count"] == 0


@pytest.fixture
def alice_and_bob(tmp_path) -> Iterator[tuple[webuiapi.WebUIApi, webuiapi.WebUIApi, StubGateway]]:
    """Two clients of one service, each with its own API key."""
    (tmp_path / "keys.txt").write_text("alice-key\nbob-key\n")
    app, gateway = make_app(tmp_path, api_keys_file=str(tmp_path / "keys.txt"))
    with served(app) as url:
        clients = [webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1") for _ in range(2)]
        for client, key in zip(clients, ("alice-key", "bob-key"), strict=True):
            client.session.headers["Authorization"] = f"Bearer {key}"
        yield clients[0], clients[1], gateway


def generating(api: webuiapi.WebUIApi) -> tuple[threading.Thread, list]:
    """A txt2img running in a thread, once `api`'s progress shows it; its result lands in the list."""
    results: list = []
    worker = threading.Thread(target=lambda: results.append(api.txt2img(prompt="x", **SMALL)))
    worker.start()
    deadline = time.monotonic() + 10
    while api.get_progress()["state"]["job_count"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.get_progress()["state"]["job_count"] == 1
    return worker, results


def test_progress_shows_only_the_callers_own_generations(alice_and_bob):
    alice, bob, gateway = alice_and_bob
    gateway.hold_s = 1.0
    worker, _ = generating(alice)
    state = bob.get_progress()["state"]
    assert state["job_count"] == 0 and state["job"] == ""
    worker.join()


@pytest.mark.parametrize("stop", ["interrupt", "skip"])
def test_interrupt_and_skip_stop_the_callers_generations_which_answer_without_images(alice_and_bob, stop):
    alice, bob, gateway = alice_and_bob
    gateway.hold_s = 60.0
    worker, results = generating(alice)
    assert getattr(bob, stop)() == {}  # bob's stops nothing of alice's
    time.sleep(0.2)
    assert worker.is_alive() and alice.get_progress()["state"]["job_count"] == 1
    started = time.monotonic()
    assert getattr(alice, stop)() == {}
    worker.join(timeout=10)
    assert not worker.is_alive() and time.monotonic() - started < 10
    (result,) = results
    assert result.images == [] and result.info["all_seeds"] == [5] and result.info["infotexts"] == []
    assert alice.get_progress()["state"]["job_count"] == 0
    assert alice.interrupt() == {}  # nothing running: still A1111's answer


def test_with_api_keys_on_webuiapi_sends_the_key_on_its_session(tmp_path):
    (tmp_path / "keys.txt").write_text("k-1\n")
    app, _ = make_app(tmp_path, api_keys_file=str(tmp_path / "keys.txt"))
    with served(app) as url:
        api = webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1")
        with pytest.raises(RuntimeError) as caught:
            api.txt2img(prompt="x", **SMALL)
        assert caught.value.args[0] == 401
        api.session.headers["Authorization"] = "Bearer k-1"
        assert api.txt2img(prompt="x", **SMALL).info["all_seeds"] == [5]


# On the real graph: A1111's images are /v1/sdxl's, pixel for pixel.


def ours(graph, body: dict) -> np.ndarray:
    response = httpx.post(f"{graph.url}/v1/sdxl", json=body, headers={"Accept": "image/png"}, timeout=120)
    assert response.status_code == 200, response.text
    return pixels(response.content)


def test_a1111_txt2img_and_img2img_equal_the_sdxl_endpoints_images(graph):
    api = webuiapi.WebUIApi(baseurl=f"{graph.url}/sdapi/v1")
    result = api.txt2img(prompt="a red fox", sampler_name="Euler", **SMALL)
    expected = ours(graph, {"prompt": "a red fox", "scheduler": "euler", **OURS})
    assert np.array_equal(pixels(base64.b64decode(result.json["images"][0])), expected)
    result = api.img2img(
        images=[image_of(PHOTO)], prompt="a castle", denoising_strength=0.6, sampler_name="Euler", **SMALL
    )
    expected = ours(
        graph, {"prompt": "a castle", "image": PHOTO, "strength": 0.6, "scheduler": "euler", **OURS}
    )
    assert np.array_equal(pixels(base64.b64decode(result.json["images"][0])), expected)
    assert result.info["all_seeds"] == [5]
    assert read_marks(base64.b64decode(result.json["images"][0]))["parameters"] == result.info["infotexts"][0]


def readme_a1111_snippet() -> str:
    """The README's webuiapi example, as written."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    start = text.index("```python\nimport webuiapi\n") + len("```python\n")
    return text[start : text.index("```\n", start)]


def test_the_readmes_webuiapi_example_runs_as_written(tmp_path):
    app, gateway = make_app(tmp_path)
    with served(app) as url:
        code = readme_a1111_snippet().replace("http://HOST:8000", url)
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[1, 2]"
    txt2img, img2img = gateway.generated
    assert (txt2img.num_images_per_prompt, txt2img.scheduler, txt2img.seed) == (2, "dpmpp_2m", 1)
    assert img2img.workflow == "inpaint" and img2img.prompt == "a castle"
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "lighthouse.png").convert("RGB")), pixels(stub_image(1))
    )
    assert (tmp_path / "castle.png").is_file()
