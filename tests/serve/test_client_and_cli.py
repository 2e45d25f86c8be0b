"""The Python client (sync and async) and `leap-ray generate`, against the running graph."""

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

from leap_ray.client import AsyncLeapRayClient, LeapRayClient, ServiceError
from tests.helpers import SMALL


def test_the_client_streams_progress_and_returns_typed_results(graph):
    client = LeapRayClient(graph.url)
    events = []
    images = client.generate_image({"prompt": "a", "seed": 4, **SMALL}, on_progress=events.append)
    assert [event["step"] for event in events] == [1, 2, 3] and images.images[0].seed == 4
    music = client.generate_music({"prompt": "a", "duration": 1, "seed": 2})
    assert (music.sample_rate, music.duration) == (32_000, 1.0)
    with pytest.raises(ServiceError) as caught:
        client.generate_image({"prompt": "a", "width": 100})
    assert (caught.value.status_code, caught.value.param) == (422, "width")


def test_the_client_runs_jobs(graph):
    client = LeapRayClient(graph.url)
    job = client.wait_job(client.submit_job("sdxl", {"prompt": "a", "seed": 1, **SMALL}).id)
    assert job.status == "succeeded"
    assert Image.open(io.BytesIO(client.job_output(job))).size == (64, 64)


def test_the_async_client(graph):
    async def run() -> list[dict]:
        client, events = AsyncLeapRayClient(graph.url), []
        track = await client.generate_music(
            {"prompt": "a", "duration": 2, "seed": 1}, on_progress=events.append
        )
        await client.aclose()
        assert track.duration == 2.0
        return events

    assert [event["seconds"] for event in asyncio.run(run())] == [1.0, 2.0]


def cli(*arguments: str, check: bool = True, text: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "leap_ray.cli", "generate", *arguments]
    return subprocess.run(command, capture_output=True, text=text, timeout=300, check=check)


def test_the_cli_writes_a_png_with_a_progress_bar(graph, tmp_path):
    done = cli(
        "image",
        "a lighthouse",
        "-o",
        str(tmp_path / "out.png"),
        "--seed",
        "3",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "3",
        "--url",
        graph.url,
    )
    assert "3/3" in done.stderr and "seed 3" in done.stderr
    assert Image.open(tmp_path / "out.png").format == "PNG"


def test_the_cli_writes_a_wav_guided_by_a_melody_file(graph, tmp_path):
    melody = tmp_path / "melody.wav"
    soundfile.write(melody, np.sin(np.arange(16_000) / 16_000 * 2 * np.pi * 440).astype(np.float32), 16_000)
    done = cli(
        "music",
        "lo-fi",
        "--duration",
        "2",
        "-o",
        str(tmp_path / "out.wav"),
        "--melody",
        str(melody),
        "--url",
        graph.url,
    )
    assert "2/2" in done.stderr
    samples, rate = soundfile.read(tmp_path / "out.wav")
    assert (len(samples), rate) == (64_000, 32_000)


def test_the_cli_takes_the_generation_flags_and_writes_to_stdout_or_several_files(graph, tmp_path):
    flags = ["--seed", "5", "--width", "64", "--height", "64", "--steps", "2", "--url", graph.url]
    flags += ["--negative-prompt", "fog", "--guidance", "4", "--scheduler", "euler"]
    piped = cli("image", "a", "-o", "-", "--format", "webp", *flags, text=False)
    assert Image.open(io.BytesIO(piped.stdout)).format == "WEBP"
    several = cli("image", "a", "-o", str(tmp_path / "set.png"), "--images", "2", "--json", *flags)
    written = json.loads(several.stdout)["outputs"]
    assert [(Path(item["path"]).name, item["seed"]) for item in written] == [
        ("set-0.png", 5),
        ("set-1.png", 6),
    ]
    assert all(Image.open(item["path"]).size == (64, 64) for item in written)
    as_job = cli("image", "a", "-o", str(tmp_path / "job.png"), "--job", *flags)
    assert "seed 5" in as_job.stderr and Image.open(tmp_path / "job.png").format == "PNG"


def test_the_cli_takes_an_image_a_mask_adapters_and_the_refiner(graph, tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    flags = ["--image", str(photo), "--mask", str(mask), "--strength", "0.8", "--lora", "ink=0.5"]
    flags += ["--lora", "paper", "--refiner", "--seed", "9", "--steps", "4", "--url", graph.url]
    cli("image", "a gate", "-o", str(tmp_path / "edited.png"), *flags)
    body = {
        "prompt": "a gate",
        "image": base64.b64encode(photo.read_bytes()).decode(),
        "mask_image": base64.b64encode(mask.read_bytes()).decode(),
        "strength": 0.8,
        "loras": [{"name": "ink", "scale": 0.5}, {"name": "paper"}],
        "refiner": {},
        "seed": 9,
        "num_inference_steps": 4,
    }
    direct = httpx.post(f"{graph.url}/v1/sdxl", json=body, headers={"Accept": "image/png"}, timeout=120)
    assert direct.status_code == 200, direct.text
    assert (tmp_path / "edited.png").read_bytes() == direct.content


def test_the_cli_says_a_service_error_on_one_line_naming_the_field(graph, tmp_path):
    done = cli("image", "a", "-o", str(tmp_path / "x.png"), "--width", "100", "--url", graph.url, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("leap-ray: error: the service answered 422")
    assert "(width)" in done.stderr


def test_a_short_load_test_against_the_graph(graph, tmp_path):
    command = [
        sys.executable,
        "-m",
        "leap_ray.cli",
        "loadtest",
        "--url",
        graph.url,
        "--rate",
        "3",
        "--duration",
        "3",
    ]
    command += ["--mix", "sdxl:64x64:2=1", "--mix", "musicgen:1=1", "--out", str(tmp_path / "load.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["sent"] > 3 and result["statuses"] == {"200": result["sent"]}
    assert set(result["done"]) == {"sdxl:64x64:2", "musicgen:1"} and "p99 ms" in done.stdout
