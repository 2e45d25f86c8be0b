"""Code written for Replicate's public models runs here unchanged, with the official `replicate` client
over HTTPS (a test CA's certificate): `stability-ai/sdxl` and `meta/musicgen` inputs become our
requests (each mapped field checked against the request our own endpoint builds), pinned version ids
work, `FileOutput.read()` gives the outputs, errors carry Replicate's `title`/`detail`/`status` and name
the public field, and `models.get`, `predictions.list` and a prediction's `logs` answer. Files given to
`run()` are uploaded to /v1/files (the client's default) and read back as the same request's bytes; they
are the uploading key's, and no other URL is fetched."""

import base64
import hashlib
import io
import os
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
import replicate
import soundfile
from PIL import Image
from replicate.exceptions import ReplicateError

from leap_ray.api.replicate_models import REPLICATE_MODELS
from leap_ray.config import LIMITS
from tests.helpers import InProcessApp, in_process_app, served, stub_image, stub_output

PUBLIC_SDXL = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 11}
SDXL_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"  # pinned by many
MUSICGEN_VERSION = "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"


@pytest.fixture
def https_client(in_process: InProcessApp, tls_certs) -> Iterator[replicate.Client]:
    """The official client, over HTTPS to the in-process app, trusting only the test CA."""
    with served(in_process.app, tls=tls_certs) as url:
        # The client wraps its own transport (retries): the CA goes to that transport.
        transport = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(tls_certs.ca)))
        client = replicate.Client(api_token="not-checked-without-keys", base_url=url, transport=transport)
        client.poll_interval = 0.1
        yield client
        transport.close()  # its kept-alive connections would hold the server's shutdown


def test_stability_ai_sdxl_inputs_run_as_our_sdxl_request_and_outputs_read_over_https(
    https_client, in_process
):
    output = https_client.run(
        "stability-ai/sdxl",
        input={**PUBLIC_SDXL, "num_outputs": 2, "scheduler": "K_EULER_ANCESTRAL", "guidance_scale": 6},
    )
    assert [file.read() for file in output] == [stub_image(11), stub_image(12)]
    assert all(str(file).startswith("https://") for file in output)
    (request,) = in_process.gateway.generated
    ours = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 11}
    ours |= {"num_images_per_prompt": 2, "scheduler": "euler_ancestral", "guidance_scale": 6.0}
    assert request == in_process.model_request("/v1/sdxl", {**ours, "apply_watermark": True})


def test_replicates_defaults_are_the_public_models_not_ours(https_client, in_process):
    https_client.run("stability-ai/sdxl", input={"prompt": "a gate", "width": 64, "height": 64, "seed": 1})
    (request,) = in_process.gateway.generated
    # stability-ai/sdxl: K_EULER, guidance 7.5, 50 steps (ours: the model's scheduler, 5.0).
    assert (request.scheduler, request.guidance_scale, request.num_inference_steps) == ("euler", 7.5, 50)


def test_img2img_inpainting_and_the_expert_refiner_map_onto_ours(https_client, in_process, tmp_path):
    rng = np.random.default_rng(3)
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    extras = {"prompt_strength": 0.7, "refine": "expert_ensemble_refiner", "high_noise_frac": 0.75}
    with photo.open("rb") as image, mask.open("rb") as mask_file:
        https_client.run(
            "stability-ai/sdxl",
            input={**PUBLIC_SDXL, "image": image, "mask": mask_file, **extras},
            file_encoding_strategy="base64",
        )
    (request,) = in_process.gateway.generated
    files = {
        name: base64.b64encode(path.read_bytes()).decode()
        for name, path in (("image", photo), ("mask_image", mask))
    }
    ours = {**PUBLIC_SDXL, **files, "strength": 0.7, "scheduler": "euler", "guidance_scale": 7.5}
    ours |= {"denoising_end": 0.75, "refiner": {"denoising_start": 0.75}, "apply_watermark": True}
    assert request == in_process.model_request("/v1/sdxl", ours)
    assert request.workflow == "inpaint" and request.wants_refiner


def test_a_pinned_public_version_runs_the_same_model(https_client, in_process):
    output = https_client.run(f"stability-ai/sdxl:{SDXL_VERSION}", input=PUBLIC_SDXL)
    assert [file.read() for file in output] == [stub_image(11)]


def test_meta_musicgen_inputs_run_as_our_musicgen_request(https_client, in_process):
    melody = io.BytesIO()
    soundfile.write(melody, np.sin(np.arange(16_000) / 20).astype(np.float32), 16_000, format="WAV")
    melody.seek(0)
    public = {"prompt": "a drum loop", "duration": 1, "seed": 2, "output_format": "mp3"}
    public |= {
        "classifier_free_guidance": 4,
        "top_k": 50,
        "temperature": 0.9,
        "model_version": "melody-large",
    }
    melody.name = "melody.wav"
    output = https_client.run(
        f"meta/musicgen:{MUSICGEN_VERSION}",
        input={**public, "input_audio": melody, "normalization_strategy": "clip"},
        file_encoding_strategy="base64",
    )
    (request,) = in_process.gateway.generated
    ours = {"prompt": "a drum loop", "duration": 1, "seed": 2, "format": "mp3", "guidance_scale": 4.0}
    ours |= {"top_k": 50, "temperature": 0.9, "top_p": 0.0}
    melody_uri = f"data:audio/wav;base64,{base64.b64encode(melody.getvalue()).decode()}"
    expected = in_process.model_request("/v1/musicgen", {**ours, "melody": melody_uri})
    assert request.model_dump(exclude={"melody"}) == expected.model_dump(exclude={"melody"})
    assert np.array_equal(request.melody.waveform, expected.melody.waveform)
    assert output.read() == stub_output(request).audio


@pytest.mark.parametrize(
    ("model", "public", "param"),
    [
        ("stability-ai/sdxl", {"scheduler": "KarrasDPM"}, "input.scheduler"),
        ("stability-ai/sdxl", {"refine": "base_image_refiner"}, "input.refine"),
        (
            "stability-ai/sdxl",
            {"replicate_weights": "https://example.com/lora.tar"},
            "input.replicate_weights",
        ),
        ("stability-ai/sdxl", {"num_outputs": 5}, "input.num_outputs"),
        ("stability-ai/sdxl", {"width": 1001}, "input.width"),
        (
            "stability-ai/sdxl",
            {"high_noise_frac": 1.5, "refine": "expert_ensemble_refiner"},
            "input.high_noise_frac",
        ),
        ("stability-ai/sdxl", {"mask": "data:image/png;base64,AAAA"}, "input.mask"),
        ("stability-ai/sdxl", {"negative_prompt_2": "x"}, "input.negative_prompt_2"),
        ("meta/musicgen", {"continuation": True}, "input.continuation"),
        ("meta/musicgen", {"multi_band_diffusion": True}, "input.multi_band_diffusion"),
        ("meta/musicgen", {"normalization_strategy": "loudness"}, "input.normalization_strategy"),
        ("meta/musicgen", {"duration": 0}, "input.duration"),
        ("meta/musicgen", {"classifier_free_guidance": 99}, "input.classifier_free_guidance"),
        ("meta/musicgen", {"output_format": "flac"}, "input.output_format"),
    ],
    ids=[
        "a scheduler we lack",
        "refining the finished image",
        "replicate-trained weights",
        "more than 4 outputs",
        "a width not a multiple of 8",
        "a hand-off past the end",
        "a mask without an image",
        "one of our fields under the public model",
        "continuation",
        "multi-band diffusion",
        "loudness normalization",
        "no duration",
        "guidance past our bound",
        "a format the public model lacks",
    ],
)
def test_what_cannot_be_honoured_is_a_422_naming_the_public_field(https_client, model, public, param):
    base = {"prompt": "a fox"} | ({"width": 64, "height": 64} if model == "stability-ai/sdxl" else {})
    with pytest.raises(ReplicateError) as raised:
        https_client.models.predictions.create(model=model, input={**base, **public})
    error = raised.value
    assert error.status == 422 and error.title == "Unprocessable Entity" and error.detail
    assert param.removeprefix("input.") in error.detail or "not supported" in error.detail


def test_the_error_body_names_the_public_field_beside_replicates_problem_details(in_process):
    answer = in_process.http.post(
        "/v1/models/stability-ai/sdxl/predictions", json={"input": {"prompt": "a", "num_outputs": 9}}
    )
    body = answer.json()
    assert answer.status_code == 422 and body["status"] == 422 and body["title"] == "Unprocessable Entity"
    assert body["error"]["param"] == "input.num_outputs" and body["detail"] == body["error"]["message"]
    answer = in_process.http.post(
        "/v1/models/stability-ai/sdxl/predictions", json={"input": {"prompt": "a", "width": 1001}}
    )
    assert answer.json()["error"]["param"] == "input.width"


def test_harmless_public_fields_are_accepted(https_client, in_process):
    harmless = {"disable_safety_checker": True, "lora_scale": 0.9, "refine_steps": 10, "seed": -1}
    https_client.run("stability-ai/sdxl", input={**PUBLIC_SDXL, **harmless})
    (request,) = in_process.gateway.generated
    assert request.seed is not None  # -1: a random seed, fixed at submission


def test_models_get_and_versions_describe_the_public_inputs(https_client):
    model = https_client.models.get("stability-ai/sdxl")
    schema = model.latest_version.openapi_schema["components"]["schemas"]
    assert {"num_outputs", "refine", "high_noise_frac", "apply_watermark"} <= set(
        schema["Input"]["properties"]
    )
    assert schema["Output"]["type"] == "array"
    assert model.latest_version.id == REPLICATE_MODELS["stability-ai/sdxl"].version
    pinned = https_client.models.get("meta/musicgen").versions.get(MUSICGEN_VERSION)
    assert "classifier_free_guidance" in pinned.openapi_schema["components"]["schemas"]["Input"]["properties"]
    ours = https_client.models.get("leap-ray/sdxl").latest_version.openapi_schema
    assert "num_images_per_prompt" in ours["components"]["schemas"]["Input"]["properties"]
    with pytest.raises(ReplicateError) as raised:
        https_client.models.get("black-forest-labs/flux-schnell")
    assert raised.value.status == 404 and "no model" in raised.value.detail


def test_predictions_list_and_logs(https_client):
    first = https_client.predictions.create(model="stability-ai/sdxl", input=PUBLIC_SDXL)
    first.wait()
    second = https_client.predictions.create(
        model="leap-ray/musicgen", input={"prompt": "a", "duration": 1, "seed": 3}
    )
    second.wait()
    listed = https_client.predictions.list()
    assert [p.id for p in listed.results] == [second.id, first.id]
    # A public model's prediction shows that model, its version and the input as the client wrote it.
    shown = listed.results[1]
    assert (shown.model, shown.version) == (
        "stability-ai/sdxl",
        REPLICATE_MODELS["stability-ai/sdxl"].version,
    )
    assert shown.input == PUBLIC_SDXL
    assert listed.results[0].model == "leap-ray/musicgen"
    assert first.logs.splitlines()[0] == "Using seed: 11" and first.logs.splitlines()[-1] == "Succeeded"
    assert "step 3/3" in first.logs and "1/1 s of audio" in second.logs


def test_a_version_that_names_nothing_is_a_404_naming_version(in_process):
    answer = in_process.http.post("/v1/predictions", json={"version": "0" * 64, "input": {"prompt": "a"}})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "version"
    answer = in_process.http.post("/v1/predictions", json={"input": {"prompt": "a"}})
    assert answer.status_code == 422 and answer.json()["error"]["param"] == "version"
    answer = in_process.http.post(
        "/v1/predictions", json={"version": "meta/musicgen", "input": {"prompt": "a"}, "stream": True}
    )
    assert answer.status_code == 422 and answer.json()["error"]["param"] == "stream"


def readme_replicate_snippet() -> str:
    """The README's Replicate example: the python block of the Replicate bullet, unindented."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    bullet = text[text.index("- **Replicate**, with the official `replicate` package") :]
    block = bullet[bullet.index("```python\n") + len("```python\n") : bullet.index("  ```\n")]
    return textwrap.dedent(block)


def test_the_readmes_replicate_example_runs_as_written(in_process, tls_certs, tmp_path):
    with served(in_process.app, tls=tls_certs) as url:
        code = readme_replicate_snippet().replace("https://HOST:8000", url)
        env = {**os.environ, "SSL_CERT_FILE": str(tls_certs.ca)}
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "lighthouse.png").read_bytes() == stub_image(1)
    sdxl, musicgen = in_process.gateway.generated
    assert (sdxl.num_images_per_prompt, sdxl.scheduler, musicgen.format) == (2, "dpmpp_2m", "mp3")
    assert (tmp_path / "beat.mp3").read_bytes() == stub_output(musicgen).audio
    assert run.stdout.strip() == "['DDIM', 'K_EULER', 'K_EULER_ANCESTRAL', 'DPMSolverMultistep']"


def noise_png(path: Path, seed: int) -> Path:
    """A 64x64 PNG of noise at `path`."""
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_open_files_are_uploaded_by_default_and_run_as_our_sdxl_request(https_client, in_process, tmp_path):
    photo, mask = noise_png(tmp_path / "photo.png", 5), tmp_path / "mask.png"
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    with photo.open("rb") as image, mask.open("rb") as mask_file:  # no file_encoding_strategy
        https_client.run(
            "stability-ai/sdxl",
            input={**PUBLIC_SDXL, "image": image, "mask": mask_file, "prompt_strength": 0.6},
        )
    (request,) = in_process.gateway.generated
    files = {
        name: base64.b64encode(path.read_bytes()).decode()
        for name, path in (("image", photo), ("mask_image", mask))
    }
    ours = {**PUBLIC_SDXL, **files, "strength": 0.6, "scheduler": "euler", "guidance_scale": 7.5}
    assert request == in_process.model_request("/v1/sdxl", {**ours, "apply_watermark": True})
    assert request.workflow == "inpaint"


def test_a_melody_uploaded_by_default_runs_as_our_musicgen_request(https_client, in_process, tmp_path):
    melody = tmp_path / "melody.wav"
    soundfile.write(melody, np.sin(np.arange(16_000) / 20).astype(np.float32), 16_000)
    with melody.open("rb") as audio:
        output = https_client.run(
            "meta/musicgen", input={"prompt": "a drum loop", "duration": 1, "seed": 4, "input_audio": audio}
        )
    (request,) = in_process.gateway.generated
    melody_uri = f"data:audio/wav;base64,{base64.b64encode(melody.read_bytes()).decode()}"
    ours = {"prompt": "a drum loop", "duration": 1, "seed": 4, "guidance_scale": 3.0, "top_k": 250}
    expected = in_process.model_request("/v1/musicgen", {**ours, "top_p": 0.0, "melody": melody_uri})
    assert request.model_dump(exclude={"melody"}) == expected.model_dump(exclude={"melody"})
    assert np.array_equal(request.melody.waveform, expected.melody.waveform)
    assert output.read() == stub_output(request).audio


def test_files_create_get_and_delete_through_the_client(https_client, tmp_path):
    photo = noise_png(tmp_path / "photo.png", 6)
    # The type is read from the bytes, never the client's word.
    created = https_client.files.create(photo, content_type="text/plain", metadata={"shot": 3})
    data = photo.read_bytes()
    assert (created.name, created.content_type, created.size) == ("photo.png", "image/png", len(data))
    assert created.checksums["sha256"] == hashlib.sha256(data).hexdigest() and created.metadata == {"shot": 3}
    assert created.urls["get"].endswith(f"/v1/files/{created.id}") and created.urls["get"].startswith(
        "https://"
    )
    kept_s = datetime.fromisoformat(created.expires_at) - datetime.fromisoformat(created.created_at)
    assert kept_s.total_seconds() == pytest.approx(24 * 3600)
    assert https_client.files.get(created.id) == created
    assert https_client.files.delete(created.id)
    with pytest.raises(ReplicateError) as raised:
        https_client.files.get(created.id)
    assert raised.value.status == 404


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(LIMITS.sdxl.max_image_bytes), 413),
        (b"#!/bin/sh\nrm -rf /\n", 422),
    ],
    ids=["an image past the upload limit", "neither an image nor audio"],
)
def test_an_upload_no_request_could_take_is_refused(https_client, content, status):
    with pytest.raises(ReplicateError) as raised:
        https_client.files.create(io.BytesIO(content), filename="x.png")
    assert raised.value.status == status and "content" in raised.value.detail


@pytest.mark.parametrize(
    ("model", "field", "url"),
    [
        ("stability-ai/sdxl", "image", "https://example.com/photo.png"),
        ("stability-ai/sdxl", "mask", "http://169.254.169.254/latest/meta-data/"),
        ("meta/musicgen", "input_audio", "https://api.replicate.com/v1/files/MTQzODk4NzQ"),
        ("leap-ray/sdxl", "image", "HTTP://localhost:6379/"),
    ],
    ids=["a site's image", "a cloud's metadata service as a mask", "Replicate's own upload", "our own image"],
)
def test_a_url_not_of_our_uploads_is_a_422_naming_the_field_and_is_never_fetched(
    https_client, model, field, url, tmp_path
):
    base = {"prompt": "a fox"}
    if "sdxl" in model:
        base |= {"width": 64, "height": 64, "image": f"data:image/png;base64,{b64_png(tmp_path)}"}
    with pytest.raises(ReplicateError) as raised:
        https_client.models.predictions.create(model=model, input={**base, field: url})
    assert raised.value.status == 422 and raised.value.detail.startswith(f"{field}: URLs are not fetched")


def b64_png(tmp_path: Path) -> str:
    return base64.b64encode(noise_png(tmp_path / "any.png", 1).read_bytes()).decode()


@pytest.fixture
def two_keys(tmp_path, tls_certs) -> Iterator[tuple[replicate.Client, replicate.Client]]:
    """The app with API keys on, over HTTPS, and the official client of each of two keys."""
    (tmp_path / "keys.txt").write_text("key-a-0123456789\nkey-b-0123456789")
    transport = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(tls_certs.ca)))
    with (
        in_process_app(tmp_path, api_keys_file=str(tmp_path / "keys.txt")) as app,
        served(app.app, tls=tls_certs) as url,
    ):
        clients = tuple(
            replicate.Client(api_token=key, base_url=url, transport=transport)
            for key in ("key-a-0123456789", "key-b-0123456789")
        )
        yield clients
        transport.close()


def test_another_keys_file_reads_as_missing_and_no_prediction_of_theirs_takes_it(two_keys, tmp_path):
    mine, theirs = two_keys
    created = mine.files.create(noise_png(tmp_path / "photo.png", 7))
    for attempt in (theirs.files.get, theirs.files.delete):
        with pytest.raises(ReplicateError) as raised:
            attempt(created.id)
        assert raised.value.status == 404
    public = {"prompt": "a fox", "width": 64, "height": 64, "image": created.urls["get"]}
    with pytest.raises(ReplicateError) as raised:
        theirs.models.predictions.create(model="stability-ai/sdxl", input=public)
    assert raised.value.status == 422 and raised.value.detail.startswith(f"image: no file {created.id}")
    prediction = mine.models.predictions.create(model="stability-ai/sdxl", input=public)
    assert prediction.status != "failed" and mine.files.get(created.id).id == created.id


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def test_img2img_keeps_the_images_size_and_inpainting_resizes_to_width_and_height(in_process):
    """As cog-sdxl: img2img passes no width or height (the default 1024 would refuse a 96² image);
    inpainting resizes the image and the mask to width × height (Lanczos, as diffusers does)."""
    rng = np.random.default_rng(5)
    photo = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    mask = Image.fromarray(np.where(np.arange(96) < 48, 255, 0).astype(np.uint8)[None].repeat(96, 0))
    route = "/v1/models/stability-ai/sdxl/predictions"
    wait = {"Prefer": "wait"}
    body = {"input": {"prompt": "a", "image": data_uri(photo), "seed": 1}}
    answer = in_process.http.post(route, json=body, headers=wait)
    assert answer.json()["status"] == "succeeded", answer.text
    inpaint = {"prompt": "a", "image": data_uri(photo), "mask": data_uri(mask), "width": 64, "height": 64}
    answer = in_process.http.post(route, json={"input": {**inpaint, "seed": 1}}, headers=wait)
    assert answer.json()["status"] == "succeeded", answer.text
    img2img, inpainting = in_process.gateway.generated
    assert (img2img.width, img2img.height, img2img.image.size) == (96, 96, (96, 96))
    assert (inpainting.width, inpainting.height) == (64, 64)
    resized = photo.resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(inpainting.image), np.asarray(resized))
    resized_mask = mask.resize((64, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(inpainting.mask_image), np.asarray(resized_mask))


@pytest.mark.parametrize(
    ("public", "param"),
    [
        ({"refine": "expert_ensemble_refiner", "high_noise_frac": 1.0}, "input.high_noise_frac"),
        ({"prompt_strength": 5}, "input.prompt_strength"),
        ({"guidance_scale": 0}, "input.guidance_scale"),
        ({"lora_scale": 2}, "input.lora_scale"),
    ],
    ids=[
        "the refiner's hand-off at the end",
        "prompt strength past 1",
        "guidance below 1",
        "lora scale past 1",
    ],
)
def test_public_bounds_and_the_refiners_hand_off_name_the_public_field(in_process, public, param):
    body = {"input": {"prompt": "a", "width": 64, "height": 64, **public}}
    answer = in_process.http.post("/v1/models/stability-ai/sdxl/predictions", json=body)
    error = answer.json()["error"]
    assert answer.status_code == 422 and error["param"] == param
    assert error["message"].startswith(param.removeprefix("input."))


@pytest.mark.parametrize(
    "version",
    ["stability-ai/sdxl:garbage", f"meta/musicgen:{SDXL_VERSION}", "someone/else:latest"],
    ids=["an id no version has", "another model's pinned id", "a model we lack"],
)
def test_a_version_must_be_one_of_the_models(in_process, version):
    answer = in_process.http.post("/v1/predictions", json={"version": version, "input": {"prompt": "a"}})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "version"


def test_replicates_models_list_and_openais_share_get_v1_models(https_client):
    names = [f"{model.owner}/{model.name}" for model in https_client.models.list().results]
    assert names == list(REPLICATE_MODELS)


def test_a_retried_put_answers_its_prediction_though_its_uploaded_file_is_gone(
    https_client, in_process, tmp_path
):
    uploaded = https_client.files.create(noise_png(tmp_path / "photo.png", 8))
    body = {
        "input": {
            "prompt": "a gate",
            "image": uploaded.urls["get"],
            "seed": 2,
            "num_inference_steps": 4,
            "strength": 0.5,
        }
    }
    first = in_process.http.put("/predictions/retry-1", json=body, headers={"Prefer": "wait"})
    assert first.status_code == 200 and first.json()["status"] == "succeeded", first.text
    https_client.files.delete(uploaded.id)
    again = in_process.http.put("/predictions/retry-1", json=body, headers={"Prefer": "wait"})
    assert again.status_code == 200 and again.json()["id"] == "retry-1"
    assert again.json()["created_at"] == first.json()["created_at"] and len(in_process.gateway.generated) == 1
