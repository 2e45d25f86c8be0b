"""The official `replicate` client and cog-style calls (`POST /predictions`, `Prefer: respond-async`,
cancel, an idempotent PUT). In-process (the ingress's app, a stub model side, the real jobs): a
prediction reaches the model as the same request as its /v1/sdxl or /v1/musicgen body, its outputs
are the model's, it is created, polled and cancelled, and errors name the field under `input`. On the
real graph, end to end: Replicate runs both models and its output URLs give the seed's image; the
README's cog-style curl commands work as written."""

import base64
import io
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import replicate
import soundfile
from PIL import Image
from replicate.exceptions import ReplicateError

from leap_ray.api.marks import read_marks
from leap_ray.serve.predictions_routes import _wait_s
from tests.helpers import APP_URL, assert_error, in_process_app, pixels, stub_image, stub_output

IMAGE = {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 3, "seed": 11}
FINISHED = ("succeeded", "failed", "canceled")


def test_the_prefer_header_is_read_as_rfc_7240_writes_it():
    assert _wait_s('wait = "2"', None) == 2.0 and _wait_s("wait=5, respond-async", None) == 0.0
    assert _wait_s("wait", 0.0) == 60.0 and _wait_s("handling=lenient", None) is None


# In-process: the mapping of predictions onto our requests, their lifecycle and errors.


@pytest.fixture
def stub_client(in_process) -> replicate.Client:
    client = replicate.Client(
        api_token="not-checked-without-keys", base_url=APP_URL, transport=in_process.transport
    )
    client.poll_interval = 0.2
    return client


def test_replicate_runs_sdxl_as_the_sdxl_request_and_its_outputs_are_the_models(stub_client, in_process):
    output = stub_client.run("leap-ray/sdxl", input={**IMAGE, "num_images_per_prompt": 2})
    assert [in_process.http.get(str(url)).content for url in output] == [stub_image(11), stub_image(12)]
    (request,) = in_process.gateway.generated
    assert request == in_process.model_request("/v1/sdxl", {**IMAGE, "num_images_per_prompt": 2})


def test_replicate_sends_files_for_inpainting_with_adapters_and_the_refiner(
    stub_client, in_process, tmp_path
):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    extras = {"loras": [{"name": "paper", "scale": 0.8}], "refiner": {}, "strength": 0.9, "seed": 3}
    extras["num_inference_steps"] = 4
    with photo.open("rb") as image, mask.open("rb") as mask_image:
        files = {"image": image, "mask_image": mask_image}
        stub_client.run(  # the client sends files as data: URIs
            "leap-ray/sdxl", input={"prompt": "a gate", **files, **extras}, file_encoding_strategy="base64"
        )
    (request,) = in_process.gateway.generated
    body = {"prompt": "a gate", "image": png_of(photo), "mask_image": png_of(mask), **extras}
    assert request == in_process.model_request("/v1/sdxl", body)
    assert request.workflow == "inpaint" and request.wants_refiner and request.loras[0].name == "paper"


def png_of(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_replicate_runs_musicgen_as_the_musicgen_request(stub_client, in_process):
    body = {"prompt": "a drum loop", "duration": 1, "seed": 2}
    output = stub_client.run("leap-ray/musicgen", input=body)
    (request,) = in_process.gateway.generated
    assert in_process.http.get(str(output)).content == stub_output(request).audio
    assert request == in_process.model_request("/v1/musicgen", body)


def test_a_replicate_prediction_is_created_polled_and_cancelled(stub_client, in_process):
    in_process.gateway.hold_s = 60  # the model is still at work when the cancel comes
    prediction = stub_client.models.predictions.create(model="leap-ray/sdxl", input=IMAGE)
    assert prediction.status in ("starting", "processing") and prediction.model == "leap-ray/sdxl"
    assert prediction.input["seed"] == IMAGE["seed"]
    prediction.cancel()
    prediction.wait()
    assert prediction.status == "canceled" and prediction.output is None
    assert prediction.input["seed"] == IMAGE["seed"]  # the record keeps the input, summarised


def test_replicate_errors_name_the_field_or_the_model(stub_client, in_process):
    with pytest.raises(ReplicateError) as caught:
        stub_client.run("leap-ray/sdxl", input={**IMAGE, "height": 7})
    assert caught.value.status == 422
    with pytest.raises(ReplicateError) as caught:
        stub_client.run("someone/else", input={})
    assert caught.value.status == 404
    assert in_process.gateway.generated == []


def test_prediction_errors_name_the_field_under_input(in_process):
    bad = in_process.http.post("/v1/models/leap-ray/sdxl/predictions", json={"input": {**IMAGE, "height": 7}})
    assert_error(bad, 422, "input.height")
    unknown = in_process.http.post("/v1/models/someone/else/predictions", json={"input": IMAGE})
    assert_error(unknown, 404, "model")
    cancel = in_process.http.post("/v1/predictions/no-such-id/cancel")  # no body, no content type
    assert_error(cancel, 404, "job_id")


def finished(http: httpx.Client, url: str) -> dict:
    deadline = time.monotonic() + 30
    while (prediction := http.get(url).json())["status"] not in FINISHED:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return prediction


def test_cog_style_predictions_answer_when_done_or_at_once_and_cancel(in_process):
    http = in_process.http
    done = http.post("/predictions", json={"input": IMAGE})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["metrics"]["predict_time"] > 0
    assert http.get(done.json()["output"][0]).content == stub_image(11)
    in_process.gateway.hold_s = 1  # not done before the answer
    music = {"model": "leap-ray/musicgen", "input": {"prompt": "a drum loop", "duration": 1}}
    started = http.post("/predictions", json=music, headers={"Prefer": "respond-async"})
    assert started.status_code == 202, started.text
    assert started.json()["status"] in ("starting", "processing")
    prediction = finished(http, f"/predictions/{started.json()['id']}")
    assert prediction["status"] == "succeeded" and "/outputs/0?expires=" in prediction["output"]
    in_process.gateway.hold_s = 60
    queued = http.post("/predictions", json={"input": IMAGE}, headers={"Prefer": "respond-async"}).json()
    cancelled = http.post(f"/predictions/{queued['id']}/cancel").json()
    assert cancelled["id"] == queued["id"]
    assert finished(http, f"/predictions/{queued['id']}")["status"] == "canceled"


def test_a_cog_put_with_the_same_id_answers_the_same_prediction(in_process):
    http = in_process.http
    body = {"input": {**IMAGE, "seed": 21}}
    in_process.gateway.hold_s = 1  # not done before the first answer
    first = http.put("/predictions/put-test", json=body, headers={"Prefer": "respond-async"})
    again = http.put("/predictions/put-test", json=body)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] == "put-test"
    assert again.json()["status"] == "succeeded" and len(again.json()["output"]) == 1
    assert len(in_process.gateway.generated) == 1  # one prediction, run once
    assert_error(http.put("/predictions/has spaces", json=body), 422, "prediction_id")
    # "." and ".." never reach the route: the client resolves them away (PUT /predictions or /)
    for dotted in ("..", "."):
        assert_error(http.put(f"/predictions/{dotted}", json=body), 405)
    assert_error(http.post("/predictions", json={**body, "id": ".."}), 422, "id")


KEYS = ("key-a-0123456789", "key-b-0123456789", "key-c-0123456789")


@pytest.fixture
def per_key(tmp_path) -> Iterator[list[httpx.Client]]:
    """The app with API keys on, and a client per key."""
    (tmp_path / "keys.txt").write_text("\n".join(KEYS))
    with in_process_app(tmp_path, api_keys_file=str(tmp_path / "keys.txt")) as app:
        clients = [
            httpx.Client(
                transport=app.transport, base_url=APP_URL, headers={"Authorization": f"Bearer {key}"}
            )
            for key in KEYS
        ]
        yield clients
        for client in clients:
            client.close()


def refusal(response: httpx.Response, prediction_id: str) -> tuple[int, dict]:
    """A refusal's status and error, the id it names written as <id>."""
    return response.status_code, json.loads(response.text.replace(prediction_id, "<id>"))


def test_prediction_ids_are_per_key_and_another_keys_id_reads_as_unused(per_key):
    # Found by hostile testing: a PUT /predictions/{id} told one key that another key's id existed.
    mine, theirs, stranger = per_key
    respond_async = {"Prefer": "respond-async"}
    for client, seed in ((mine, 1), (theirs, 2)):
        created = client.put(
            "/predictions/shared", json={"input": {**IMAGE, "seed": seed}}, headers=respond_async
        )
        assert (created.status_code, created.json()["id"]) == (202, "shared")
    for client, seed in ((mine, 1), (theirs, 2)):  # each key sees its own, outputs and all
        prediction = finished(client, "/v1/predictions/shared")
        assert prediction["input"]["seed"] == seed
        assert client.get(prediction["output"][0]).content == stub_image(seed)
        again = client.put("/predictions/shared", json={"input": {**IMAGE, "seed": 9}})
        assert again.json()["input"]["seed"] == seed  # idempotent, for the key that chose the id
        assert [job["id"] for job in client.get("/v1/jobs").json()] == ["shared"]
    for method, path in [
        ("GET", "/v1/predictions/{}"),
        ("POST", "/predictions/{}/cancel"),
        ("GET", "/v1/jobs/{}"),
    ]:
        taken = stranger.request(method, path.format("shared"))
        unused = stranger.request(method, path.format("never-used"))
        assert refusal(taken, "shared") == refusal(unused, "never-used")
        assert taken.status_code == 404
    created = stranger.put("/predictions/shared", json={"input": IMAGE}, headers=respond_async)
    assert (created.status_code, created.json()["id"]) == (202, "shared")  # as for an unused id


def test_a_finished_predictions_outputs_come_as_data_uris_when_asked(in_process):
    answer = in_process.http.post("/predictions", json={"input": IMAGE, "data_uris": True})
    (uri,) = answer.json()["output"]
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == stub_image(11)


# On the real graph: the models' outputs and the README's commands, end to end.


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
    first = httpx.get(str(output[0]), timeout=30).content
    # The seed's image, with the seed's parameters (its record tells the request of two images).
    assert np.array_equal(pixels(first), pixels(reference))
    assert read_marks(first)["parameters"] == read_marks(reference)["parameters"]


def test_replicate_runs_musicgen(client):
    output = client.run("leap-ray/musicgen", input={"prompt": "a drum loop", "duration": 1, "seed": 2})
    samples, rate = soundfile.read(io.BytesIO(httpx.get(str(output), timeout=30).content))
    assert (len(samples), rate) == (32_000, 32_000)


def readme_cog_commands() -> list[str]:
    """The cog-style curl commands of the README, continuation lines joined."""
    text = (Path(__file__).parents[2] / "README.md").read_text().replace("\\\n", " ")
    return [
        line.split("  #")[0]
        for line in text.splitlines()
        if line.startswith("curl ") and "127.0.0.1:8000/predictions" in line
    ]


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
