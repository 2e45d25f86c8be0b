"""`batching: step` on a real graph: a short request behind a long one comes back first over HTTP
with the images each gets alone; progress streams and cancellation still work."""

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.helpers import pixels

from .conftest import stats

APP = "steps"
SIZE = {"height": 64, "width": 64}


@pytest.fixture(scope="module")
def steps(variants) -> str:
    user_config = {"max_batch_size": 8, "batch_wait_timeout_s": 0.0, "batching": "step"}
    variants.deploy_with(variants.variant(APP, deployments={"SDXL": {"user_config": user_config}}))
    return f"{variants.url}/{APP}"


def image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return pixels(base64.b64decode(response.json()["images"][0]["data"]))


def test_a_short_request_behind_a_long_one_comes_back_first_with_the_same_images(steps, client):
    long = {"prompt": "long", "seed": 1, "num_inference_steps": 150, "height": 256, "width": 256}
    short = {"prompt": "short", "seed": 2, "num_inference_steps": 3, "height": 256, "width": 256}
    done: dict[str, float] = {}

    def post(name: str, body: dict) -> httpx.Response:
        response = httpx.post(f"{steps}/v1/sdxl", json=body, timeout=300)
        done[name] = time.monotonic()
        return response

    with ThreadPoolExecutor(2) as pool:
        long_response = pool.submit(post, "long", long)
        time.sleep(0.5)
        short_response = pool.submit(post, "short", short)
        short_image, long_image = image(short_response.result()), image(long_response.result())
    assert done["short"] < done["long"]
    for body, got in ((short, short_image), (long, long_image)):
        expected = image(client.post("/v1/sdxl", json=body))  # alone, on the main application
        assert np.abs(got - expected).max() <= 1


def test_progress_streams_and_a_disconnect_frees_the_replica(steps):
    body = {"prompt": "a", "seed": 3, "num_inference_steps": 4, "stream": True, **SIZE}
    with httpx.stream("POST", f"{steps}/v1/sdxl", json=body, timeout=120) as response:
        events = [line for line in response.iter_lines() if line.startswith("event: ")]
    assert events == ["event: progress"] * 4 + ["event: result"]
    long = {"prompt": "abandoned", "seed": 4, "num_inference_steps": 150, "height": 256, "width": 256}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{steps}/v1/sdxl", json=long, timeout=1.5)
    deadline = time.monotonic() + 30
    while stats("SDXL", APP)["ongoing"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stats("SDXL", APP)["ongoing"] == 0 and stats("SDXL", APP)["cancelled"] >= 1
