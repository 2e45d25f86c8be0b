import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
from PIL import Image

from tests.helpers import SMALL, pixels


def wav_melody(frequency: float = 440.0, seconds: float = 2.0) -> str:
    t = np.arange(int(seconds * 16_000)) / 16_000
    buffer = io.BytesIO()
    soundfile.write(buffer, np.sin(2 * np.pi * frequency * t).astype(np.float32), 16_000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def test_healthz_answers(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_true_once_both_models_run(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert {m["running_replicas"] for m in body["models"].values()} == {1}


def test_sdxl_returns_json_images_with_their_seeds(client):
    response = client.post(
        "/v1/sdxl", json={"prompt": "a lighthouse", "num_images_per_prompt": 2, "seed": 5, **SMALL}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [image["seed"] for image in body["images"]] == [5, 6]
    assert body["batch_size"] >= 2
    for image in body["images"]:
        assert image["format"] == "png"
        assert Image.open(io.BytesIO(base64.b64decode(image["data"]))).size == (64, 64)
    assert set(body["timings"]) >= {"encode_s", "generate_s"}


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "image/webp"])
def test_sdxl_returns_raw_bytes_for_an_image_accept(client, content_type):
    response = client.post(
        "/v1/sdxl", json={"prompt": "a", "seed": 9, **SMALL}, headers={"Accept": content_type}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-seed"] == "9"
    assert Image.open(io.BytesIO(response.content)).format == content_type.split("/")[1].upper()


def test_raw_bytes_for_several_images_is_406(client):
    body = {"prompt": "a", "num_images_per_prompt": 2, **SMALL}
    response = client.post("/v1/sdxl", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert response.json()["error"]["param"] == "num_images_per_prompt"


def test_concurrent_requests_are_batched_and_each_image_equals_its_solo_run(client):
    bodies = [
        {"prompt": f"scene {i}", "seed": 100 + i, "guidance_scale": 3.0 + i, **SMALL} for i in range(10)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        batched = list(pool.map(lambda body: client.post("/v1/sdxl", json=body).json(), bodies))
    assert max(response["batch_size"] for response in batched) > 1
    for body, response in zip(bodies, batched, strict=True):
        solo = client.post("/v1/sdxl", json=body).json()
        assert solo["batch_size"] == 1
        together = pixels(base64.b64decode(response["images"][0]["data"]))
        alone = pixels(base64.b64decode(solo["images"][0]["data"]))
        assert np.abs(together - alone).max() <= 1  # equal up to rounding to 8 bits


def test_musicgen_returns_json_audio_of_the_asked_length(client):
    response = client.post("/v1/musicgen", json={"prompt": "lo-fi beat", "duration": 2, "seed": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["format"], body["sample_rate"], body["duration"], body["seed"]) == ("wav", 32_000, 2.0, 4)
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(body["audio"])))
    assert (len(samples), rate) == (64_000, 32_000)


@pytest.mark.parametrize(
    ("accept", "container"),
    [("audio/wav", "WAV"), ("audio/flac", "FLAC"), ("audio/ogg", "OGG"), ("audio/mpeg", "MP3")],
)
def test_musicgen_returns_raw_audio_for_an_audio_accept(client, accept, container):
    response = client.post(
        "/v1/musicgen", json={"prompt": "a", "duration": 1, "seed": 1}, headers={"Accept": accept}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == accept
    assert response.headers["x-sample-rate"] == "32000"
    assert soundfile.info(io.BytesIO(response.content)).format == container


def test_a_melody_over_http_changes_the_music(client):
    plain = client.post("/v1/musicgen", json={"prompt": "a", "duration": 1, "seed": 1}).json()["audio"]
    guided = client.post(
        "/v1/musicgen", json={"prompt": "a", "duration": 1, "seed": 1, "melody": wav_melody()}
    )
    assert guided.status_code == 200
    assert guided.json()["audio"] != plain


BAD = [
    ("sdxl-width-not-multiple-of-8", "/v1/sdxl", {"prompt": "a", "width": 100}, "width"),
    ("sdxl-unknown-field", "/v1/sdxl", {"prompt": "a", "sharpness": 1}, "sharpness"),
    (
        "sdxl-callback-over-http",
        "/v1/sdxl",
        {"prompt": "a", "callback_on_step_end": "x"},
        "callback_on_step_end",
    ),
    (
        "sdxl-latents-shape-the-model-rejects",
        "/v1/sdxl",
        {
            "prompt": "a",
            **SMALL,
            "latents": {
                "dtype": "float32",
                "shape": [1, 4, 4, 4],
                "data": base64.b64encode(bytes(256)).decode(),
            },
        },
        "latents",
    ),
    ("musicgen-duration-60.5", "/v1/musicgen", {"prompt": "a", "duration": 60.5}, "duration"),
    ("musicgen-format-exe", "/v1/musicgen", {"prompt": "a", "format": "exe"}, "format"),
]


@pytest.mark.parametrize(("path", "body", "param"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_gets_422_naming_the_field_and_never_reaches_a_replica(
    client, replica_stats, path, body, param
):
    before = replica_stats()
    response = client.post(path, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]
    assert replica_stats() == before


def test_openapi_shows_every_field_with_its_description_and_bounds(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/sdxl", "/v1/musicgen", "/healthz", "/readyz"} <= set(schema["paths"])
    components = schema["components"]["schemas"]
    for name in ("SDXLRequest", "MusicGenRequest"):
        for field, spec in components[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    sdxl = components["SDXLRequest"]["properties"]
    assert (sdxl["width"]["minimum"], sdxl["width"]["maximum"], sdxl["width"]["multipleOf"]) == (64, 2048, 8)
    assert sdxl["num_inference_steps"]["maximum"] == 150
    duration = components["MusicGenRequest"]["properties"]["duration"]
    assert (duration["exclusiveMinimum"], duration["maximum"], duration["default"]) == (0, 60, 10)
    assert client.get("/docs").status_code == 200
