"""MusicGen audio that streams while it is generated, in-process with the stub model: `audio.delta`
events (with `stream: true`, or Accept: text/event-stream) whose PCM, joined in order, is the final
track's samples; jobs and predictions keep no audio, whatever their input says; the clients'
`on_audio` and `leap-ray generate music --play` play what arrives."""

import asyncio
import base64
import io
import struct
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

from leap_ray.api.progress import AudioDelta
from leap_ray.cli import WavStream
from leap_ray.client import AsyncLeapRayClient, LeapRayClient
from tests.helpers import (
    call,
    in_process_app,
    make_app,
    pcm_samples,
    served,
    sse_events,
    stub_output,
    wav_samples,
)

TRACK = {"prompt": "lo-fi", "duration": 2.3, "seed": 5}  # 2.3 s: five pieces, the last a short one
RATE = 32_000


@pytest.fixture
def app_and_gateway(tmp_path):
    return make_app(tmp_path)


def streamed(app, body: dict, headers: dict | None = None) -> list[tuple[str, dict]]:
    response = call(app, "POST", "/v1/musicgen", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_events(response.text)


def joined(deltas: list[dict]) -> np.ndarray:
    return np.concatenate([pcm_samples(base64.b64decode(delta["audio"])) for delta in deltas])


@pytest.mark.parametrize(
    ("body", "headers"),
    [({**TRACK, "stream": True}, {}), (TRACK, {"Accept": "text/event-stream"})],
    ids=["stream-true", "accept-event-stream"],
)
def test_audio_delta_pieces_join_to_the_final_tracks_samples(app_and_gateway, body, headers):
    app, gateway = app_and_gateway
    events = streamed(app, body, headers)
    names = [name for name, _ in events]
    assert names == ["audio.delta"] * 5 + ["progress", "result"]
    deltas = [data for name, data in events if name == "audio.delta"]
    assert {(d["format"], d["sample_rate"]) for d in deltas} == {("pcm16", RATE)}
    lengths = [len(base64.b64decode(d["audio"])) // 2 for d in deltas]
    assert [d["start"] for d in deltas] == [sum(lengths[:i]) / RATE for i in range(len(deltas))]
    final = wav_samples(base64.b64decode(events[-1][1]["audio"]))
    assert len(final) == round(2.3 * RATE) and np.array_equal(joined(deltas), final)
    assert gateway.generated[-1].stream  # the Accept header alone asks the model for audio too


@pytest.mark.parametrize(
    "accept", [None, "audio/wav", "application/json"], ids=["no-accept", "raw-wav", "json"]
)
def test_an_answer_that_is_not_events_asks_the_model_for_no_audio(app_and_gateway, accept):
    app, gateway = app_and_gateway
    response = call(app, "POST", "/v1/musicgen", json=TRACK, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200 and not gateway.generated[-1].stream


def test_sdxl_events_carry_no_audio(app_and_gateway):
    app, _ = app_and_gateway
    body = {"prompt": "a", "height": 64, "width": 64, "num_inference_steps": 2, "stream": True}
    response = call(app, "POST", "/v1/sdxl", json=body)
    assert [name for name, _ in sse_events(response.text)] == ["progress", "progress", "result"]


def wait_for(http, url: str) -> dict:
    deadline = time.monotonic() + 30
    while (view := http.get(url).json())["status"] not in ("succeeded", "failed", "cancelled", "canceled"):
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    return view


@pytest.mark.parametrize("model_streams_anyway", [False, True], ids=["model-obeys", "model-sends-audio"])
def test_a_job_asking_to_stream_runs_without_audio_and_keeps_none(tmp_path, model_streams_anyway):
    with in_process_app(tmp_path) as in_process:
        in_process.gateway.audio_always = model_streams_anyway  # pieces reach the job's progress hook
        body = {"service": "musicgen", "input": {**TRACK, "stream": True}}
        created = in_process.http.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        view = wait_for(in_process.http, created.json()["url"])
        (request,) = in_process.gateway.generated
        assert view["status"] == "succeeded" and not request.stream
        assert view["progress"] == {"seconds": 2.3, "total": 2.3}  # never a piece of audio
        assert in_process.http.get(view["outputs"][0]).content == stub_output(request).audio


def test_a_replicate_prediction_asking_to_stream_succeeds(tmp_path):
    with in_process_app(tmp_path) as in_process:
        in_process.gateway.audio_always = True
        created = in_process.http.post(
            "/v1/models/leap-ray/musicgen/predictions",
            json={"input": {**TRACK, "stream": True}},
            headers={"Prefer": "wait=30"},
        )
        assert created.status_code == 201 and created.json()["status"] == "succeeded", created.text


def test_both_clients_hand_on_audio_the_pieces_as_they_arrive(app_and_gateway):
    app, _ = app_and_gateway
    pieces: list[AudioDelta] = []
    async_pieces: list[AudioDelta] = []

    async def generate_async(url: str) -> str:
        async with AsyncLeapRayClient(url) as client:
            return (await client.generate_music(TRACK, on_audio=async_pieces.append)).audio

    with served(app) as url:
        with LeapRayClient(url) as client:
            track = client.generate_music(TRACK, on_audio=pieces.append)
        async_track = asyncio.run(generate_async(url))
    final = wav_samples(base64.b64decode(track.audio))
    assert async_track == track.audio and len(pieces) == len(async_pieces) == 5
    for received in (pieces, async_pieces):
        assert np.array_equal(np.concatenate([pcm_samples(p.pcm) for p in received]), final)


def wav_stream(data: bytes) -> tuple[int, np.ndarray]:
    """A WAV stream's sample rate and samples, its header checked: sizes unknown (0xFFFFFFFF)."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and data[36:40] == b"data"
    assert struct.unpack("<I", data[4:8]) == struct.unpack("<I", data[40:44]) == (0xFFFFFFFF,)
    with wave.open(io.BytesIO(data)) as reader:  # as a player reading a pipe would
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        return reader.getframerate(), pcm_samples(reader.readframes(len(data)))


def test_cli_play_writes_a_wav_stream_to_stdout_and_the_final_file(app_and_gateway, tmp_path):
    app, _ = app_and_gateway
    output = tmp_path / "track.wav"
    arguments = [
        "generate",
        "music",
        "lo-fi",
        "--duration",
        "2.3",
        "--seed",
        "5",
        "--play",
        "-o",
        str(output),
    ]
    with served(app) as url:
        done = subprocess.run(
            [sys.executable, "-m", "leap_ray.cli", *arguments, "--url", url], capture_output=True, timeout=120
        )
    assert done.returncode == 0, done.stderr.decode()
    rate, samples = wav_stream(done.stdout)
    assert rate == RATE and np.array_equal(samples, wav_samples(output.read_bytes()))
    stderr = done.stderr.decode()
    assert "music: 2.3/2.3" in stderr and f"wrote {output} (seed 5)" in stderr


def test_cli_play_alone_plays_the_audio_before_the_track_is_done(app_and_gateway):
    app, gateway = app_and_gateway
    gateway.hold_s = 3.0  # the model holds its result back after the last piece
    arguments = ["generate", "music", "a", "--duration", "1", "--seed", "1", "--play"]
    with served(app) as url:
        process = subprocess.Popen(
            [sys.executable, "-m", "leap_ray.cli", *arguments, "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        played = process.stdout.read(44 + 2 * RATE)  # no -o: the stream is all there is
        still_running = process.poll() is None
        rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode()
    assert still_running and rest == b"" and len(wav_stream(played)[1]) == RATE


def piece(samples: np.ndarray, start: int) -> AudioDelta:
    audio = base64.b64encode(samples.astype("<i2").tobytes()).decode()
    return AudioDelta(audio=audio, sample_rate=RATE, start=start / RATE)


def test_the_wav_stream_places_pieces_by_start_so_a_retried_track_is_not_played_twice():
    out = io.BytesIO()
    play = WavStream(out)
    track = np.arange(300, dtype=np.int16)
    for start, end in [(0, 100), (100, 200), (0, 100), (100, 200), (200, 300)]:  # a replica died at 200
        play(piece(track[start:end], start))
    assert np.array_equal(pcm_samples(out.getvalue()[44:]), track)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["image", "a", "--play"], "--play plays music"),
        (["music", "a", "--play", "--job"], "a job (--job) sends no audio"),
        (["music", "a", "--play", "-o", "-"], "--play writes to stdout already"),
        (["music", "a"], "-o/--output is required"),
    ],
    ids=["image", "job", "stdout-twice", "no-output"],
)
def test_cli_play_mistakes_are_one_line(arguments, says):
    done = subprocess.run(
        [sys.executable, "-m", "leap_ray.cli", "generate", *arguments], capture_output=True, text=True
    )
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2 and line.startswith("leap-ray: error: ") and says in line
