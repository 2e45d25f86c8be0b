"""Test helpers shared by several test modules: decoded pixels, hostile audio files built by hand,
the diffusers references of SDXL workflows (img2img, inpainting, LoRA, the refiner ensemble), the
ingress's HTTP app in-process with a stub model side (`StubGateway`, `make_app`, `in_process_app`),
served over HTTP or HTTPS (`served`, `TlsCerts`), and a webhook receiver (`Receiver`)."""

import asyncio
import base64
import io
import json
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import soundfile
import torch
import trustme
import uvicorn
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from fastapi import FastAPI
from PIL import Image
from pydantic import ValidationError

from leap_ray.api.audio import audio_delta, encode_audio
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenOutput, MusicGenRequest
from leap_ray.api.progress import AudioProgress, Progress, StepProgress
from leap_ray.api.sdxl import SDXLModelSpec, SDXLOutput, SDXLRequest
from leap_ray.config import LIMITS, IngressSettings, JobsSettings, UploadLimits
from leap_ray.engines.contract import RunningBatch
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl_pipelines import SCHEDULER_CLASSES, WORKFLOW_PIPELINES
from leap_ray.errors import InvalidRequest, invalid_request_from
from leap_ray.serve.gateway import ModelGateway
from leap_ray.serve.ingress import build_http_app
from leap_ray.serve.jobs.service import Jobs
from leap_ray.serve.outputs import OutputMarker
from leap_ray.testing.simulated import simulated_track

BUCKET = "leap-outputs"  # the bucket the tests' moto server (conftest's s3_endpoint) starts with
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto", "AWS_REGION": "us-east-1"}

SMALL = {"height": 64, "width": 64, "num_inference_steps": 3}  # an SDXL request that costs little


def ingress_processes(app: str) -> list[psutil.Process]:
    """The processes of an application's ingress replicas (Ray names them in their command line)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(f"ServeReplica:{app}:Ingress" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def pixels(data: bytes) -> np.ndarray:
    """An encoded image's RGB pixels, as int16 so that differences may be taken."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def wav_bytes(sample_rate: int, *, frames: int = 1600, data_size: int | None = None) -> bytes:
    """A mono 16-bit WAV written by hand, so that its header may say what soundfile would not write."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2 % 2**32, 2, 16)
    data = bytes(2 * frames)
    size = len(data) if data_size is None else data_size
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def encoded(samples: np.ndarray, rate: int, container: str = "FLAC") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=container)
    return buffer.getvalue()


def flac_silence(seconds: float, *, rate: int = 8000, channels: int = 1) -> bytes:
    return encoded(np.zeros((round(seconds * rate), channels), dtype=np.int16), rate)


def with_total_samples(flac: bytes, total: int) -> bytes:
    """Patches the FLAC STREAMINFO's 36-bit total-samples field; 0 means the length is unknown."""
    patched = bytearray(flac)
    assert patched[:4] == b"fLaC" and patched[4] & 0x7F == 0  # STREAMINFO is the first block
    # After "fLaC", the block header and 10 bytes: 20 bits of rate, 3 of channels, 5 of sample size.
    at = 4 + 4 + 13
    patched[at] = patched[at] & 0xF0 | total >> 32
    patched[at + 1 : at + 5] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(patched)


def solo(
    reference: StableDiffusionXLPipeline, request: SDXLRequest, seeds: list[int], **overrides: object
) -> np.ndarray:
    """What a direct diffusers call with the request's parameters gives: the workflow's own pipeline
    (text2img, img2img, inpaint) on the reference's modules, with the request's sampler."""
    pipeline_class = WORKFLOW_PIPELINES.get(request.workflow, StableDiffusionXLPipeline)
    if request.scheduler is not None or pipeline_class is not type(reference):
        scheduler = reference.scheduler
        if request.scheduler is not None:
            scheduler = SCHEDULER_CLASSES[request.scheduler].from_config(reference.scheduler.config)
        reference = pipeline_class.from_pipe(reference, scheduler=scheduler)
        reference.set_progress_bar_config(disable=True)
    kwargs = request.to_pipeline_kwargs()
    if request.workflow != "text2img":
        del kwargs["latents"]
        kwargs.update(image=request.image, strength=request.effective_strength())
    if request.workflow == "img2img":
        del kwargs["height"], kwargs["width"]
    if request.workflow == "inpaint":
        kwargs["mask_image"] = request.mask_image
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return reference(**kwargs | {"generator": generators, "output_type": "np"} | overrides).images


def refused_sdxl(**fields: object) -> InvalidRequest:
    """The error an SDXLRequest with these fields (and a prompt) is refused with."""
    with pytest.raises(ValidationError) as caught:
        SDXLRequest(prompt="x", **fields)
    error = invalid_request_from(caught.value.errors())
    assert isinstance(error, InvalidRequest)
    return error


def seeds_of(request: SDXLRequest) -> list[int]:
    return [request.seed + j for j in range(request.image_count)]


def run_steps(batch: RunningBatch, arrivals: dict[int, list[Any]]) -> dict[int, object]:
    """Steps the batch until it is empty, admitting `arrivals[k]` before step k; outcomes by seed (a
    refiner's hand-off: its request's seed)."""
    outcomes, step = {}, 0
    while batch.load or any(k >= step for k in arrivals):
        for request in arrivals.get(step, []):
            assert batch.admit(request) is None
        for request, outcome in batch.step():
            outcomes[getattr(request, "request", request).seed] = outcome
        step += 1
    return outcomes


def png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def lora_solo(reference: StableDiffusionXLPipeline, request: SDXLRequest) -> np.ndarray:
    """diffusers' own way: set_adapters with the request's scales (or LoRA off)."""
    if request.loras:
        reference.enable_lora()
        reference.set_adapters([lora.name for lora in request.loras], [lora.scale for lora in request.loras])
    else:
        reference.disable_lora()
    return solo(reference, request, seeds_of(request))


def ensemble_reference(
    base: StableDiffusionXLPipeline, refiner: StableDiffusionXLImg2ImgPipeline, request: SDXLRequest
) -> np.ndarray:
    """diffusers' documented two-pipeline call, one process, the same generators through both: the
    base (of the request's workflow) to denoising_end as latents, then the refiner from denoising_start
    (an inpainting's refiner: the inpainting pipeline with the refiner's weights, image and mask)."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds_of(request)]
    latents = solo(base, request, seeds_of(request), generator=generators, output_type="latent")
    refiner_class = WORKFLOW_PIPELINES.get(request.workflow, StableDiffusionXLImg2ImgPipeline)
    scheduler_class = SCHEDULER_CLASSES[request.scheduler] if request.scheduler else type(refiner.scheduler)
    refiner = refiner_class.from_pipe(
        refiner, scheduler=scheduler_class.from_config(refiner.scheduler.config)
    )
    refiner.set_progress_bar_config(disable=True)
    inputs = {}
    if request.workflow == "inpaint":
        inputs = {"mask_image": request.mask_image, "height": request.height, "width": request.width}
    options = request.refiner
    return refiner(
        prompt=request.prompt,
        negative_prompt=request.to_pipeline_kwargs()["negative_prompt"],
        image=latents,
        generator=generators,
        num_images_per_prompt=request.num_images_per_prompt,
        num_inference_steps=options.num_inference_steps or request.num_inference_steps,
        denoising_start=options.denoising_start or request.denoising_end,
        guidance_scale=request.guidance_scale,
        aesthetic_score=options.aesthetic_score,
        negative_aesthetic_score=options.negative_aesthetic_score,
        output_type="np",
        **inputs,
    ).images


def reference_pipeline(pipeline_class: type, folder: object) -> Any:
    """A diffusers pipeline loaded from a tiny model's folder, quiet, as the references use them."""
    pipeline = pipeline_class.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# The ingress's HTTP app in-process, no Ray: the real routes, middleware, validation and jobs, with a
# stub gateway for the model side.

SPECS = {
    "sdxl": SDXLModelSpec(
        latent_channels=4,
        vae_scale_factor=8,
        text_embed_width=96,
        pooled_embed_width=32,
        text_tokens=77,
        refiner=True,
        loras=("ink", "paper"),
        native_size=256,
        suggested_steps=8,
    ),
    "musicgen": MusicGenModelSpec(sample_rate=32000, frame_rate=50, supports_melody=True),
}  # the tiny models' facts, with the main graph's refiner and adapters
APP_URL = "http://testserver"


def stub_image(seed: int) -> bytes:
    """The stub model's image for a seed: a PNG of one grey level, so that each seed's differs."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), seed % 256).save(buffer, format="PNG")
    return buffer.getvalue()


STUB_PIECE_S = 0.5  # the stub streams a track in pieces of this length, as the engine does


def stub_output(request: SDXLRequest | MusicGenRequest) -> SDXLOutput | MusicGenOutput:
    """What the stub model answers: one `stub_image` per image and seed; a track of the simulated
    engine's seeded noise (`simulated_track`), encoded in the request's format."""
    if isinstance(request, SDXLRequest):
        seeds = [request.seed + index for index in range(request.image_count)]
        images = [stub_image(seed) for seed in seeds]
        return SDXLOutput(images=images, format="png", seeds=seeds, timings={}, batch_size=len(seeds))
    sample_rate = SPECS["musicgen"].sample_rate
    return MusicGenOutput(
        audio=encode_audio(simulated_track(request.seed, request.duration), sample_rate, request.format),
        format=request.format,
        sample_rate=sample_rate,
        duration=request.duration,
        seed=request.seed,
        timings={},
        batch_size=1,
    )


class StubGateway(ModelGateway):
    """The real gateway's validation, model checks and seed rule (`prepare` is the real one), with the
    tiny models' facts (`SPECS`) and `stub_output`s. `generated` records every request that reached the
    model side, as the route made it; each model call takes `hold_s` (a job to cancel must run);
    `audio_always` streams a track's audio even without `stream` (a model that ignores it); with a
    `marker`, images are encoded as a model deployment's are, carrying their marks."""

    def __init__(self, settings: IngressSettings) -> None:
        super().__init__({}, settings)
        self.generated: list[SDXLRequest | MusicGenRequest] = []
        self.hold_s = 0.0
        self.audio_always = False
        self.marker: OutputMarker | None = None

    async def _spec(self, service: str) -> object:
        return SPECS[service]

    async def generate(self, service: str, request: Any) -> SDXLOutput | MusicGenOutput:
        self.generated.append(request)
        await asyncio.sleep(self.hold_s)
        output = stub_output(request)
        if self.marker is not None and isinstance(output, SDXLOutput):
            grey = [np.asarray(Image.open(io.BytesIO(image)).convert("RGB")) / 255 for image in output.images]
            result = SDXLResult(images=grey, seeds=output.seeds, timings={}, batch_size=output.batch_size)
            output.images = self.marker.images(request, result)
        return output

    async def events(
        self, service: str, request: Any
    ) -> AsyncIterator[Progress | SDXLOutput | MusicGenOutput]:
        """Progress per denoising step (a preview every `preview_every` steps), or a track's audio in
        half-second pieces (with `stream`) and its one progress event; then the output."""
        self.generated.append(request)
        if isinstance(request, SDXLRequest):
            total = request.num_inference_steps
            for step in range(1, total + 1):
                previewed = request.preview_every and step % request.preview_every == 0
                preview = base64.b64encode(stub_image(step)).decode() if previewed else None
                yield StepProgress(
                    step=step, total=total, timestep=1000.0 * (1 - step / total), preview=preview
                )
        else:
            if request.stream or self.audio_always:
                track, rate = simulated_track(request.seed, request.duration), SPECS["musicgen"].sample_rate
                piece = round(STUB_PIECE_S * rate)
                for start in range(0, len(track), piece):
                    yield audio_delta(track[start : start + piece], rate, start)
            yield AudioProgress(seconds=request.duration, total=request.duration)
        await asyncio.sleep(self.hold_s)
        yield stub_output(request)


def make_app(
    tmp_path: Path,
    uploads: UploadLimits = LIMITS.uploads,
    jobs_options: dict[str, Any] | None = None,
    **settings: object,
) -> tuple[FastAPI, StubGateway]:
    """The ingress's HTTP app with a `StubGateway`, its jobs in `tmp_path` (with `jobs_options`, more
    JobsSettings); `settings` are the ingress's (limits, keys, timeouts), `uploads` how bodies may arrive."""
    where = {"store_path": str(tmp_path / "jobs.sqlite3"), "output_dir": str(tmp_path / "out")}
    jobs = JobsSettings(**{**where, **(jobs_options or {})})
    jobs = jobs.for_application("test")
    ingress = IngressSettings(jobs=jobs, **settings)
    gateway = StubGateway(ingress)
    jobs_of_app = Jobs(gateway, jobs, ingress.public_url, ingress.output_url_secret())
    return build_http_app(gateway, jobs_of_app, ingress, uploads), gateway


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to the app, on an event loop of its own."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=APP_URL) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """The response is `status` in the error shape, naming `param`; its error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    return error


class AppTransport(httpx.BaseTransport):
    """A sync transport into an ASGI app that runs on an event loop of its own thread, as a server's
    does: the loop goes on between requests (the job runner's tasks), so that synchronous clients
    (`httpx.Client`, `openai.OpenAI`, `replicate.Client`) submit, poll and cancel jobs as over a network.
    Each answer comes whole (a stream's events arrive once it ends)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="app-loop", daemon=True)
        self._thread.start()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def answer() -> httpx.Response:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=request.read()
            )
            response = await self._app.handle_async_request(inner)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return asyncio.run_coroutine_threadsafe(answer(), self._loop).result(timeout=60)

    def close(self) -> None:
        """Cancels what still runs on the app's loop (the job runner) and stops it."""

        async def stop() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@dataclass
class InProcessApp:
    """The app with a `StubGateway`, and a sync client into it through an `AppTransport`."""

    app: FastAPI
    gateway: StubGateway
    transport: AppTransport
    http: httpx.Client  # base URL APP_URL

    def model_request(self, path: str, body: dict[str, Any]) -> SDXLRequest | MusicGenRequest:
        """What the model side gets of `body` sent to `path` (/v1/sdxl, /v1/musicgen): what another
        entry point's request must equal."""
        response = self.http.post(path, json=body)
        assert response.status_code == 200, response.text
        return self.gateway.generated.pop()


@contextmanager
def in_process_app(tmp_path: Path, **settings: object) -> Iterator[InProcessApp]:
    app, gateway = make_app(tmp_path, **settings)
    transport = AppTransport(app)
    try:
        with httpx.Client(transport=transport, base_url=APP_URL, timeout=60) as http:
            yield InProcessApp(app, gateway, transport, http)
    finally:
        transport.close()


class Receiver:
    """A loopback HTTP server that fails its first `failures` deliveries, then records the rest
    (`received`); `attempts_seen` has every attempt."""

    def __init__(self, failures: int) -> None:
        self.failures, self.attempts, self.received, self.attempts_seen = failures, 0, [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                receiver.attempts_seen.append((dict(self.headers), body))
                if receiver.attempts <= receiver.failures:
                    self.send_response(503)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@dataclass(frozen=True)
class TlsCerts:
    """A test certificate authority and a server certificate it issued for 127.0.0.1 and localhost, as
    PEM files: `cert` (the server's chain) and `key` are what a server is given (uvicorn's and Serve's
    ssl_certfile / ssl_keyfile, `leap-ray serve --tls-cert --tls-key`); `ca` is what a client trusts
    (httpx's `verify=ssl.create_default_context(cafile=ca)`, SSL_CERT_FILE)."""

    cert: Path
    key: Path
    ca: Path


def write_tls_certs(folder: Path) -> TlsCerts:
    """A new test CA (trustme) and a server certificate for 127.0.0.1 and localhost, written to `folder`."""
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    files = TlsCerts(cert=folder / "server.pem", key=folder / "server.key", ca=folder / "ca.pem")
    server.private_key_pem.write_to_path(str(files.key))
    files.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    authority.cert_pem.write_to_path(str(files.ca))
    return files


@contextmanager
def served(app: FastAPI, tls: TlsCerts | None = None) -> Iterator[str]:
    """The app served over HTTP by uvicorn on a free loopback port, on a thread of its own, for what
    needs a real URL and answers as they stream (the CLI in a subprocess, a browser); its URL. With
    `tls`, over HTTPS with its server certificate (the URL is then https://127.0.0.1:PORT)."""
    certificate = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **certificate)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sse_events(text: str) -> list[tuple[str, dict]]:
    """A Server-Sent Events answer's (event, data) pairs, in order."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def pcm_samples(pcm: bytes) -> np.ndarray:
    """16-bit little-endian PCM as int16 samples."""
    return np.frombuffer(pcm, dtype="<i2")


def wav_samples(data: bytes) -> np.ndarray:
    """An encoded track's samples as int16 (a WAV holds them as they are)."""
    return soundfile.read(io.BytesIO(data), dtype="int16")[0]


def base64_on_loop(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[bool]:
    """Spies on a module's base64 encoding: for each call, whether it ran on an event loop's thread
    (a route that renders images as base64 there blocks every other client)."""
    on_loop: list[bool] = []

    def b64encode(data: bytes) -> bytes:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return base64.b64encode(data)

    monkeypatch.setattr(module, "base64", SimpleNamespace(b64encode=b64encode))
    return on_loop
