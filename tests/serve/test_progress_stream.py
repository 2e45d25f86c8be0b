"""Server-Sent Events: one progress event per denoising step (per generated second for MusicGen),
then the same result the JSON endpoint gives."""

import base64
import io
import json

import httpx
import numpy as np
import soundfile
from PIL import Image

from leap_ray.engines.musicgen_stream import SNR_TOLERANCE_DB, snr_db
from tests.helpers import SMALL, pixels


def read_events(url: str, body: dict) -> list[tuple[str, dict]]:
    events = []
    with httpx.stream(
        "POST", url, json=body, headers={"Accept": "text/event-stream"}, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_sdxl_streams_one_event_per_step_then_the_result(graph, client):
    body = {"prompt": "a lighthouse", "seed": 3, **SMALL, "num_inference_steps": 4}
    events = read_events(f"{graph.url}/v1/sdxl", body)
    progress = [data for name, data in events if name == "progress"]
    assert [(e["step"], e["total"]) for e in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [name for name, _ in events][-1] == "result"
    streamed = events[-1][1]["images"][0]
    plain = client.post("/v1/sdxl", json=body).json()["images"][0]
    assert streamed["seed"] == plain["seed"] == 3
    assert (
        abs(pixels(base64.b64decode(streamed["data"])) - pixels(base64.b64decode(plain["data"]))).max() <= 1
    )


def test_musicgen_streams_one_event_per_second_then_the_result(graph):
    events = read_events(f"{graph.url}/v1/musicgen", {"prompt": "lo-fi", "duration": 3, "seed": 1})
    assert [data["seconds"] for name, data in events if name == "progress"] == [1.0, 2.0, 3.0]
    name, result = events[-1]
    assert name == "result" and result["duration"] == 3.0 and result["seed"] == 1


def test_bad_input_is_still_a_plain_422(graph):
    response = httpx.post(
        f"{graph.url}/v1/sdxl", json={"prompt": "a", "width": 100}, headers={"Accept": "text/event-stream"}
    )
    assert (response.status_code, response.json()["error"]["param"]) == (422, "width")


def test_stream_true_in_the_body_streams_too_with_previews(graph):
    body = {"prompt": "a", "seed": 1, **SMALL, "num_inference_steps": 4, "stream": True, "preview_every": 2}
    with httpx.stream("POST", f"{graph.url}/v1/sdxl", json=body, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    progress = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [("preview" in event) for event in progress] == [False, True, False, True]
    preview = Image.open(io.BytesIO(base64.b64decode(progress[1]["preview"])))
    assert (preview.format, preview.size) == ("PNG", (8, 8))  # 1/8 of 64 px: the latents' size


def test_musicgen_streams_its_audio_as_it_is_made_and_the_pieces_join_to_the_result(graph):
    body = {"prompt": "lo-fi", "duration": 3, "seed": 4, "format": "wav"}
    events = read_events(f"{graph.url}/v1/musicgen", body)
    names = [name for name, _ in events]
    deltas = [data for name, data in events if name == "audio.delta"]
    assert len(deltas) >= 6 and names.index("audio.delta") < names.index("result")
    joined = np.concatenate([np.frombuffer(base64.b64decode(d["audio"]), dtype="<i2") for d in deltas])
    final, rate = soundfile.read(io.BytesIO(base64.b64decode(events[-1][1]["audio"])), dtype="int16")
    assert rate == deltas[0]["sample_rate"] == 32_000 and joined.shape == final.shape == (96_000,)
    assert snr_db(final.astype(np.float64), joined.astype(np.float64)) >= SNR_TOLERANCE_DB
    plain = httpx.post(f"{graph.url}/v1/musicgen", json=body, timeout=120).json()
    assert plain["audio"] == events[-1][1]["audio"]  # streaming leaves the track unchanged
