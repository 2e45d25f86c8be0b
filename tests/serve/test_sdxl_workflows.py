"""SDXL workflows over HTTP on the local graph (tiny refiner and adapters included): img2img,
inpainting, LoRA adapters and the refiner hand-off each give their diffusers reference's images while
sharing the service with each other; the refiner's progress covers both stages; bad inputs get 422
naming the field; adapter sets route to the replica that holds them."""

import base64
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from httpx_sse import connect_sse
from PIL import Image
from ray import serve

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.client import LeapRayClient
from tests.helpers import ensemble_reference, lora_solo, pixels, png, reference_pipeline, seeds_of, solo

from .conftest import APP

RANDOM = np.random.default_rng(1)
PHOTO = png(RANDOM.integers(0, 256, (64, 80, 3), dtype=np.uint8))
MASK = png(np.where(np.arange(80)[None, :] < 40, 255, 0).repeat(64, axis=0).astype(np.uint8))
STEPS = {"num_inference_steps": 4}
BODIES = {
    "img2img": {"prompt": "a harbour", "image": f"data:image/png;base64,{PHOTO}", "strength": 0.7, "seed": 1},
    "inpaint": {"prompt": "a gate", "image": PHOTO, "mask_image": MASK, "seed": 2},
    "lora": {"prompt": "ink", "loras": [{"name": "ink", "scale": 0.7}], "height": 64, "width": 64, "seed": 3},
    "refiner": {"prompt": "a tower", "refiner": {"aesthetic_score": 7}, "height": 64, "width": 64, "seed": 4},
}


@pytest.fixture(scope="module")
def references(tiny_models) -> dict[str, object]:
    def load(pipeline_class, name):
        return reference_pipeline(pipeline_class, tiny_models[name])

    with_adapters = load(StableDiffusionXLPipeline, "sdxl")
    for name, folder in (("ink", "sdxl-lora"), ("paper", "sdxl-lora-2")):
        with_adapters.load_lora_weights(tiny_models[folder], adapter_name=name)
    return {
        "base": load(StableDiffusionXLPipeline, "sdxl"),
        "adapters": with_adapters,
        "refiner": load(StableDiffusionXLImg2ImgPipeline, "sdxl-refiner"),
    }


def expected(kind: str, request: SDXLRequest, references: dict) -> np.ndarray:
    if kind == "lora":
        return lora_solo(references["adapters"], request)
    if kind == "refiner":
        return ensemble_reference(references["base"], references["refiner"], request)
    return solo(references["base"], request, seeds_of(request))


def test_each_workflow_served_together_equals_its_diffusers_reference(client, references):
    bodies = [{**body, **STEPS} for body in BODIES.values()]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/v1/sdxl", json=body), bodies))
    for kind, body, response in zip(BODIES, bodies, responses, strict=True):
        assert response.status_code == 200, (kind, response.text)
        (image,) = response.json()["images"]
        served = pixels(base64.b64decode(image["data"]))
        reference = np.round(expected(kind, SDXLRequest.model_validate(body), references)[0] * 255)
        assert served.shape == reference.shape, kind
        assert np.abs(served - reference).max() <= 1, kind  # equal up to rounding to 8 bits


def test_refiner_progress_covers_both_stages_then_the_result(client):
    body = {**BODIES["refiner"], "num_inference_steps": 10, "refiner": {"num_inference_steps": 10}}
    events = []
    with connect_sse(client, "POST", "/v1/sdxl", json=body) as source:
        events = [(event.event, event.json()) for event in source.iter_sse()]
    stages = [(data["stage"], data["step"], data["total"]) for name, data in events if name == "progress"]
    # The base runs the steps before denoising_end (0.8 by default), the refiner those after it.
    assert stages == [("base", step, 8) for step in range(1, 9)] + [("refiner", 1, 2), ("refiner", 2, 2)]
    assert events[-1][0] == "result" and events[-1][1]["images"][0]["seed"] == 4


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"loras": [{"name": "chalk"}]}, "loras"),
        ({"loras": [{"name": "ink", "scale": 9}]}, "loras"),
        ({"image": PHOTO, "mask_image": png(np.zeros((64, 64), dtype=np.uint8))}, "mask_image"),
        ({"image": base64.b64encode(b"GIF89a not an image").decode()}, "image"),
        ({"image": "data:image/png;base64,@@@"}, "image"),
        ({"image": PHOTO, "strength": 1.5}, "strength"),
        ({"image": PHOTO, "strength": 0.0}, "strength"),
        ({"strength": 0.5}, "strength"),
        ({"mask_image": MASK}, "mask_image"),
        ({"image": PHOTO, "height": 128}, "height"),
        ({"refiner": {"denoising_start": 1.5}}, "refiner"),
        ({"refiner": {"bogus": 1}}, "refiner"),
    ],
    ids=[
        "unknown-adapter",
        "scale-out-of-range",
        "mask-of-another-size",
        "not-an-image",
        "not-base64",
        "strength-over-1",
        "strength-0",
        "strength-without-image",
        "mask-without-image",
        "height-not-the-image's",
        "refiner-start-out-of-range",
        "refiner-unknown-field",
    ],
)
def test_bad_workflow_input_is_a_422_naming_the_field(client, change, param):
    size = {} if "image" in change else {"height": 64, "width": 64}  # an image gives its own
    response = client.post("/v1/sdxl", json={"prompt": "x", **size, **change})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_the_adapters_are_listed(client):
    assert client.get("/v1/sdxl/adapters").json() == {"loras": ["ink", "paper"]}


def test_without_a_refiner_deployed_asking_for_it_is_a_422_naming_refiner(variants):
    variants.deploy_with(variants.variant("plain"))
    body = {"prompt": "x", "height": 64, "width": 64, "refiner": {}}
    response = httpx.post(f"{variants.url}/plain/v1/sdxl", json=body, timeout=120)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "refiner"
    assert "refiner" not in httpx.get(f"{variants.url}/plain/readyz", timeout=30).json()["models"]
    plain = httpx.post(
        f"{variants.url}/plain/v1/sdxl", json={**body, "refiner": {"enabled": False}}, timeout=120
    )
    assert plain.status_code == 200, plain.text


def test_the_readiness_report_includes_the_refiner(client):
    assert client.get("/readyz").json()["models"]["refiner"]["running_replicas"] == 1


def test_requests_naming_an_adapter_set_go_to_the_replica_that_holds_it(variants, tiny_models):
    app = variants.variant(
        "routed",
        sdxl={"loras": {"ink": str(tiny_models["sdxl-lora"])}},
        deployments={"SDXL": {"autoscaling_config": None, "num_replicas": 2}},
    )
    variants.deploy_with(app)
    body = {"prompt": "x", "loras": [{"name": "ink"}], "seed": 1, "height": 64, "width": 64, **STEPS}
    url = f"{variants.url}/routed/v1/sdxl"
    assert httpx.post(url, json=body, timeout=120).status_code == 200
    time.sleep(3)  # Serve pushes which replica holds which adapter set to the routers
    for _ in range(6):
        assert httpx.post(url, json=body, timeout=120).status_code == 200
    holder = serve.get_deployment_handle("SDXL", "routed").options(multiplexed_model_id="ink")
    stats = holder.stats.remote().result()
    assert (stats["requests"], stats["adapter_loads"]) == (7, 1), stats


def test_a_job_and_a_handle_give_the_same_workflow_images_as_http(graph, client):
    body = {**BODIES["inpaint"], **STEPS, "loras": [{"name": "paper"}], "refiner": {}}
    direct = client.post("/v1/sdxl", json=body, headers={"Accept": "image/png"})
    assert direct.status_code == 200, direct.text
    leap = LeapRayClient(graph.url)
    job = leap.wait_job(leap.submit_job("sdxl", body).id)
    assert job.status == "succeeded" and job.input["image"].startswith("<")  # the record summarises it
    assert leap.job_output(job) == direct.content
    # Through a handle an image may be a PIL image.
    handled = {**body, "image": Image.open(io.BytesIO(base64.b64decode(PHOTO)))}
    output = serve.get_app_handle(APP).sdxl.remote(handled).result()
    assert output.images[0] == direct.content


def readme_workflow_commands() -> str:
    """The README's shell lines for the workflows: from `IMG=` to the `leap-ray generate` line."""
    lines = (Path(__file__).parents[2] / "README.md").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("IMG=$(base64"))
    end = next(index for index in range(start, len(lines)) if lines[index].startswith("leap-ray generate"))
    return "\n".join(lines[start : end + 1])


def test_the_readmes_workflow_commands_work_as_written(graph, tmp_path):
    Image.open(io.BytesIO(base64.b64decode(PHOTO))).save(tmp_path / "photo.png")
    Image.open(io.BytesIO(base64.b64decode(MASK))).save(tmp_path / "mask.png")
    script = readme_workflow_commands().replace("http://127.0.0.1:8000", graph.url)
    curl, cli = script.rsplit("\n", 1)
    environment = {
        **os.environ,
        "LEAP_RAY_URL": graph.url,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for commands, written in ((curl, "by-curl.png"), (cli, "by-cli.png")):
        commands = commands.replace("edited.png", written)
        subprocess.run(["bash", "-ec", commands], cwd=tmp_path, env=environment, check=True, timeout=300)
        assert Image.open(tmp_path / written).size == (80, 64)


def test_a_job_naming_an_unknown_adapter_is_a_422_naming_input_loras(client):
    body = {"service": "sdxl", "input": {"prompt": "x", "loras": [{"name": "chalk"}]}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "input.loras"
