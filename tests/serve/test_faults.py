"""A model replica killed mid-batch costs no request: the ingress retries it once on a restarted
replica (safe, since the seed is fixed); a second death is a clear 503. A model that cannot load
says so in /readyz."""

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from ray import serve

from tests.helpers import SMALL, pixels


def dying(variants, name: str, marker_dir, deaths: int) -> dict:
    engine = {
        "engine": "leap_ray.testing.fakes:DyingSDXLEngine",
        "engine_kwargs": {"marker_dir": str(marker_dir), "deaths": deaths},
    }
    return variants.variant(name, sdxl=engine)


def dying_refiner(variants, tiny_models, marker_dir) -> dict:
    refiner = {
        "model": str(tiny_models["sdxl-refiner"]),
        "engine": "leap_ray.testing.fakes:DyingRefinerEngine",
        "engine_kwargs": {"marker_dir": str(marker_dir), "deaths": 1},
    }
    return variants.variant("refiner_dies", refiner=refiner)


@pytest.fixture(scope="module")
def faulty(variants, tmp_path_factory, tiny_models):
    markers = tmp_path_factory.mktemp("deaths")
    variants.deploy_with(
        dying(variants, "dying", markers / "once", 1),
        dying(variants, "doomed", markers / "twice", 2),
        dying_refiner(variants, tiny_models, markers / "refiner"),
    )
    return markers


def sdxl_status(app: str) -> str:
    return serve.status().applications[app].deployments["SDXL"].status.value


def test_requests_of_a_killed_replica_are_retried_and_give_the_right_images(graph, faulty):
    bodies = [{"prompt": f"survivor {i}", "seed": 40 + i, **SMALL} for i in range(3)]
    with httpx.Client(timeout=180) as client, ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda body: client.post(f"{graph.url}/dying/v1/sdxl", json=body), bodies))
        assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
        assert len(list((faulty / "once").iterdir())) == 1  # it did die, once
        for body, result in zip(bodies, results, strict=True):
            reference = client.post(f"{graph.url}/v1/sdxl", json=body).json()  # the main app, never killed
            got, expected = (
                pixels(base64.b64decode(r["images"][0]["data"])) for r in (result.json(), reference)
            )
            assert np.abs(got - expected).max() <= 1
        assert (
            client.post(f"{graph.url}/dying/v1/musicgen", json={"prompt": "a", "duration": 0.5}).status_code
            == 200
        )
    deadline = time.monotonic() + 120
    while sdxl_status("dying") != "HEALTHY" and time.monotonic() < deadline:
        time.sleep(1)
    assert sdxl_status("dying") == "HEALTHY"


def test_a_request_whose_retry_also_dies_gets_a_clear_503(graph, faulty):
    response = httpx.post(
        f"{graph.url}/doomed/v1/sdxl", json={"prompt": "a", "seed": 1, **SMALL}, timeout=180
    )
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "model_unavailable_error"
    assert int(response.headers["retry-after"]) >= 1
    assert len(list((faulty / "twice").iterdir())) == 2


def test_a_request_whose_refiner_replica_dies_is_retried_and_gives_the_right_image(graph, faulty):
    body = {"prompt": "refined survivor", "seed": 44, "refiner": {}, **SMALL}
    with httpx.Client(timeout=180) as client:
        result = client.post(f"{graph.url}/refiner_dies/v1/sdxl", json=body)
        assert result.status_code == 200, result.text
        assert len(list((faulty / "refiner").iterdir())) == 1  # it did die, once
        reference = client.post(f"{graph.url}/v1/sdxl", json=body).json()  # the main app's refiner
    got, expected = (pixels(base64.b64decode(r["images"][0]["data"])) for r in (result.json(), reference))
    assert np.abs(got - expected).max() <= 1


def test_a_model_that_cannot_load_says_so_in_readyz(variants, faulty):
    broken = variants.variant("broken", sdxl={"engine": "leap_ray.testing.fakes:BrokenSDXLEngine"})
    variants.deploy_with(broken, wait=False)
    deadline, body = time.monotonic() + 180, {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{variants.url}/broken/readyz", timeout=30)
        body = response.json() if response.headers.get("content-type") == "application/json" else {}
        models = body.get("models", {})
        failed_load_reported = "file is corrupt" in models.get("sdxl", {}).get("message", "")
        if failed_load_reported and models.get("musicgen", {}).get("running_replicas"):
            break
        time.sleep(1)
    assert response.status_code == 503
    assert body["ready"] is False
    assert "file is corrupt" in body["models"]["sdxl"]["message"]
    assert body["models"]["musicgen"]["running_replicas"] == 1
