"""The official `replicate` client, pointed at the graph, runs both models and cancels a prediction;
cog-style calls (`POST /predictions`, `Prefer: respond-async`, cancel) work as the README shows."""

import base64
import io
import json
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import replicate
import soundfile
from PIL import Image
from replicate.exceptions import ReplicateError

from leap_ray.serve.predictions_routes import _wait_s

IMAGE = {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 3, "seed": 11}


@pytest.fixture(scope="module")
def client(graph) -> replicate.Client:
    client = replicate.Client(api_token="not-checked-without-keys", base_url=graph.url)
    client.poll_interval = 0.2
    return client


@pytest.fixture(scope="module")
def reference(graph) -> bytes:
    response = httpx.post(f"{graph.url}/v1/sdxl", json=IMAGE, headers={"Accept": "image/png"}, timeout=120)
    assert response.status_code == 200
    return response.content


def test_replicate_runs_sdxl_and_its_output_urls_give_the_seeds_image(client, reference):
    output = client.run("leap-ray/sdxl", input={**IMAGE, "num_images_per_prompt": 2})
    assert len(output) == 2
    assert httpx.get(str(output[0]), timeout=30).content == reference


def test_replicate_sends_files_for_inpainting_with_adapters_and_the_refiner(client, graph, tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    extras = {"loras": [{"name": "paper", "scale": 0.8}], "refiner": {}, "strength": 0.9, "seed": 3}
    extras["num_inference_steps"] = 4
    with photo.open("rb") as image, mask.open("rb") as mask_image:
        files = {"image": image, "mask_image": mask_image}
        output = client.run(  # the client sends files as data: URIs
            "leap-ray/sdxl", input={"prompt": "a gate", **files, **extras}, file_encoding_strategy="base64"
        )
    body = {"prompt": "a gate", "image": png_of(photo), "mask_image": png_of(mask), **extras}
    direct = httpx.post(f"{graph.url}/v1/sdxl", json=body, headers={"Accept": "image/png"}, timeout=120)
    assert direct.status_code == 200, direct.text
    assert httpx.get(str(output[0]), timeout=30).content == direct.content


def png_of(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_replicate_runs_musicgen(client):
    output = client.run("leap-ray/musicgen", input={"prompt": "a drum loop", "duration": 1, "seed": 2})
    samples, rate = soundfile.read(io.BytesIO(httpx.get(str(output), timeout=30).content))
    assert (len(samples), rate) == (32_000, 32_000)


def test_a_replicate_prediction_is_created_polled_and_cancelled(client):
    prediction = client.models.predictions.create(
        model="leap-ray/sdxl", input={**IMAGE, "num_inference_steps": 150, "height": 512, "width": 512}
    )
    assert prediction.status in ("starting", "processing") and prediction.model == "leap-ray/sdxl"
    assert prediction.input["seed"] == IMAGE["seed"]
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled" and prediction.output is None
    assert prediction.input["seed"] == IMAGE["seed"]  # the record keeps the input, summarised


def test_replicate_errors_name_the_field_or_the_model(client):
    with pytest.raises(ReplicateError) as caught:
        client.run("leap-ray/sdxl", input={**IMAGE, "height": 7})
    assert caught.value.status == 422
    with pytest.raises(ReplicateError) as caught:
        client.run("someone/else", input={})
    assert caught.value.status == 404


def test_prediction_errors_name_the_field_under_input(graph):
    bad = httpx.post(
        f"{graph.url}/v1/models/leap-ray/sdxl/predictions", json={"input": {**IMAGE, "height": 7}}
    )
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "input.height"
    cancel = httpx.post(f"{graph.url}/v1/predictions/no-such-id/cancel")  # no body, no content type
    assert cancel.status_code == 404 and cancel.json()["error"]["param"] == "job_id"


def test_cog_style_predictions_answer_when_done_or_at_once_and_cancel(graph, reference):
    done = httpx.post(f"{graph.url}/predictions", json={"input": IMAGE}, timeout=120)
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["metrics"]["predict_time"] > 0
    assert httpx.get(done.json()["output"][0], timeout=30).content == reference
    music = {"model": "leap-ray/musicgen", "input": {"prompt": "a drum loop", "duration": 1}}
    started = httpx.post(
        f"{graph.url}/predictions", json=music, headers={"Prefer": "respond-async"}, timeout=30
    )
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("starting", "processing")
    url = f"{graph.url}/predictions/{started.json()['id']}"
    deadline = time.monotonic() + 120
    while (prediction := httpx.get(url).json())["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert prediction["status"] == "succeeded" and prediction["output"].endswith("/outputs/0")
    slow = {"input": {**IMAGE, "num_inference_steps": 150, "height": 512, "width": 512}}
    queued = httpx.post(f"{graph.url}/predictions", json=slow, headers={"Prefer": "respond-async"}).json()
    cancelled = httpx.post(f"{graph.url}/predictions/{queued['id']}/cancel").json()
    assert cancelled["id"] == queued["id"]


def readme_cog_commands() -> list[str]:
    """The cog-style curl commands of the README, continuation lines joined."""
    text = (Path(__file__).parents[2] / "README.md").read_text().replace("\\\n", " ")
    return [
        line.split("  #")[0]
        for line in text.splitlines()
        if line.startswith("curl ") and "127.0.0.1:8000/predictions" in line
    ]


def test_the_prefer_header_is_read_as_rfc_7240_writes_it():
    assert _wait_s('wait = "2"', None) == 2.0 and _wait_s("wait=5, respond-async", None) == 0.0
    assert _wait_s("wait", 0.0) == 60.0 and _wait_s("handling=lenient", None) is None


def test_the_readmes_cog_curl_commands_work_as_written(graph):
    commands = [command.replace("http://127.0.0.1:8000", graph.url) for command in readme_cog_commands()]
    assert len(commands) == 4

    def run(command: str) -> dict:
        done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=180, check=True)
        return json.loads(done.stdout)

    assert run(commands[0])["status"] == "succeeded"
    started = run(commands[1])
    assert "id" in started, started
    assert started["model"] == "leap-ray/musicgen"
    polled = run(commands[2].replace("ID", started["id"]))
    assert polled["id"] == started["id"] and polled["status"] in ("starting", "processing", "succeeded")
    assert run(commands[3].replace("ID", started["id"]))["id"] == started["id"]


def test_a_cog_put_with_the_same_id_answers_the_same_prediction(graph):
    body = {"input": {**IMAGE, "seed": 21}}
    url = f"{graph.url}/predictions/put-test-{time.time_ns()}"
    first = httpx.put(url, json=body, headers={"Prefer": "respond-async"}, timeout=30)
    again = httpx.put(url, json=body, timeout=120)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] == url.rsplit("/", 1)[1]
    assert again.json()["status"] == "succeeded" and len(again.json()["output"]) == 1
    for bad_id in ("has spaces", "..", "."):
        bad = httpx.put(f"{graph.url}/predictions/{bad_id}", json=body)
        # "." and ".." never reach the route: the client resolves them away (PUT /predictions/ or /)
        assert bad.status_code in (404, 405, 422), bad_id
        assert bad.status_code != 422 or bad.json()["error"]["param"] == "prediction_id"
    dotted = httpx.post(f"{graph.url}/predictions", json={**body, "id": ".."})
    assert dotted.status_code == 422 and dotted.json()["error"]["param"] == "id"


def test_a_finished_predictions_outputs_come_as_data_uris_when_asked(graph, reference):
    answer = httpx.post(f"{graph.url}/predictions", json={"input": IMAGE, "data_uris": True}, timeout=120)
    (uri,) = answer.json()["output"]
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == reference
