"""A graph whose model deployments run the simulated engines (injected by config) serves HTTP under
step batching as the real graph does: what an operator uses to test the control plane without GPUs."""

import base64
import io

import httpx
import soundfile

from tests.helpers import pixels

SIMULATED = "leap_ray.testing.simulated"


def test_a_graph_of_simulated_engines_serves_images_and_music(variants):
    simulated = variants.variant(
        "simulated",
        sdxl={
            "model": "simulated",
            "engine": f"{SIMULATED}:SimulatedSDXLEngine",
            "engine_kwargs": {"step_s": 0.001, "image_step_s": 0.0, "overhead_s": 0.0},
        },
        musicgen={
            "model": "simulated",
            "engine": f"{SIMULATED}:SimulatedMusicGenEngine",
            "engine_kwargs": {"token_s": 0.0002, "track_token_s": 0.0, "overhead_s": 0.0},
        },
    )
    variants.deploy_with(simulated)
    base = f"{variants.url}/simulated"
    image = httpx.post(
        f"{base}/v1/sdxl",
        json={"prompt": "a", "seed": 3, "height": 256, "width": 128, "num_inference_steps": 5},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert image.status_code == 200 and pixels(image.content).shape == (256, 128, 3)
    music = httpx.post(f"{base}/v1/musicgen", json={"prompt": "a", "duration": 2, "seed": 1}, timeout=120)
    assert music.status_code == 200, music.text
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(music.json()["audio"])))
    assert (len(samples), rate) == (64_000, 32_000)
