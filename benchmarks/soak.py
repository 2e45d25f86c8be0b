"""Soak: does the ingress give its memory back? (issue 25: over an hour of hostile testing it grew
from 626 MB to 1.57 GB, the whole service from 4.6 to 6.7 GB, and kept it). The real graph on the
tiny models over HTTP; for --minutes, Poisson arrivals at --rate of a mix: small SDXL and MusicGen
requests (img2img and a melody among them), jobs polled to their output, OpenAI and cog requests, and
bombs the service refuses: bodies over the limit (declared, and sent chunked), deeply nested JSON,
5,000-digit numbers, tensors of impossible shapes, the hostile images of
leap_ray.testing.hostile_images at the upload limit (on /v1/sdxl, jobs and OpenAI edits), bad base64,
and bodies that trickle in until their 408. Every --sample-s it takes the RSS of the ingress replica,
of Serve's HTTP proxy and of every process of the Ray it started, and how long the ingress takes to
answer a GET it answers itself (/v1/sdxl/adapters; /healthz is answered at the proxy).

Growth: (median of the last quarter of the samples after warm-up - median of the first quarter) /
the first quarter's, for the ingress. Target: within 10 %.

    python -m benchmarks.soak [--minutes 30] [--rate 2] [--sample-s 30] [--warm-up-min 5]
"""

import argparse
import asyncio
import base64
import io
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import soundfile

from benchmarks.common import application, graph, models, print_table, write_results
from leap_ray.config import LIMITS
from leap_ray.loadtest import arrival_times
from leap_ray.testing import hostile_images as hostile

APP = "soak"
MB = 1_000_000
SMALL = {"height": 64, "width": 64, "num_inference_steps": 2}  # an SDXL request that costs little
REQUEST_TIMEOUT_S = 120.0
MAX_IN_FLIGHT = 48  # past it an arrival is skipped (and counted): the soak must not become a flood
DRAIN_S = 120.0
TARGET = 0.10  # the ingress's growth after warm-up, either way
JOB_POLL_S = 0.5
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

Send = Callable[[httpx.AsyncClient, str, int], Awaitable[str]]
OK = frozenset({"200"})


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix: its share of the arrivals, the statuses it should get (200 for
    a valid request, the 4xx that refuses a bomb), and how it is sent (returning its answer's status,
    or what went wrong)."""

    name: str
    weight: float
    expected: frozenset[str]
    send: Send


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def status(response: httpx.Response) -> str:
    return str(response.status_code)


# --- what valid requests carry, built once ---


@cache
def small_png() -> bytes:
    return hostile.encoded(hostile.noise(64), "PNG")


@cache
def melody_wav() -> bytes:
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32)
    soundfile.write(buffer, tone, 8000, format="WAV")
    return buffer.getvalue()


async def sdxl(client: httpx.AsyncClient, url: str, seed: int) -> str:
    return status(await client.post(f"{url}/v1/sdxl", json={"prompt": "a lighthouse", **SMALL, "seed": seed}))


async def img2img(client: httpx.AsyncClient, url: str, seed: int) -> str:
    body = {"prompt": "a lighthouse", "image": b64(small_png()), "strength": 0.5, "num_inference_steps": 4}
    return status(await client.post(f"{url}/v1/sdxl", json={**body, "seed": seed}))


async def musicgen(client: httpx.AsyncClient, url: str, seed: int) -> str:
    body: dict[str, Any] = {"prompt": "lo-fi beat", "duration": 1.0, "seed": seed}
    if seed % 2:  # every other track follows a melody, which the ingress decodes
        body["melody"] = b64(melody_wav())
    return status(await client.post(f"{url}/v1/musicgen", json=body))


async def job(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """A job submitted, polled to its end, and its first output fetched (every third one is cancelled
    at once instead: a cancel's 200)."""
    service, work = ("musicgen", {"duration": 1.0}) if seed % 2 else ("sdxl", SMALL)
    submission = {"service": service, "input": {"prompt": "a job", **work, "seed": seed}}
    submitted = await client.post(f"{url}/v1/jobs", json=submission)
    if submitted.status_code != 202:
        return status(submitted)
    job_url = f"{url}/v1/jobs/{submitted.json()['id']}"
    if seed % 3 == 0:
        return status(await client.delete(job_url))
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while time.monotonic() < deadline:
        polled = await client.get(job_url)
        if polled.status_code != 200 or polled.json()["status"] in TERMINAL:
            break
        await asyncio.sleep(JOB_POLL_S)
    else:
        return "job-not-done"
    if polled.status_code != 200 or polled.json()["status"] != "succeeded":
        return status(polled) if polled.status_code != 200 else f"job-{polled.json()['status']}"
    return status(await client.get(f"{job_url}/outputs/0"))


async def openai_generation(client: httpx.AsyncClient, url: str, seed: int) -> str:
    body = {"prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 2, "seed": seed}
    if seed % 2:  # every other one as a link to a job's output, which the client then fetches
        answer = await client.post(f"{url}/v1/images/generations", json={**body, "response_format": "url"})
        if answer.status_code != 200:
            return status(answer)
        return status(await client.get(answer.json()["data"][0]["url"]))
    return status(await client.post(f"{url}/v1/images/generations", json=body))


async def openai_edit(client: httpx.AsyncClient, url: str, seed: int) -> str:
    fields = {"prompt": "a lighthouse", "strength": "0.5", "num_inference_steps": "4", "seed": str(seed)}
    files = {"image": ("image.png", small_png(), "image/png")}
    return status(await client.post(f"{url}/v1/images/edits", data=fields, files=files))


async def cog_prediction(client: httpx.AsyncClient, url: str, seed: int) -> str:
    body = {"input": {"prompt": "a prediction", **SMALL, "seed": seed}}
    return status(await client.post(f"{url}/predictions", json=body))


# --- bombs ---

# The families of hostile images, each at the upload limit (16 MB), as the hostile testing sent them.
HOSTILE_IMAGES: dict[str, Callable[[], bytes]] = {
    "jpeg-repeated-scans": lambda: hostile.repeated_scan_jpeg_of(16 * MB),
    "jpeg-fill-bytes": lambda: hostile.padded_jpeg(16 * MB, b"\xff"),
    "jpeg-empty-comments": lambda: hostile.padded_jpeg(16 * MB, b"\xff\xfe\x00\x02"),
    "png-empty-chunks": lambda: hostile.empty_chunk_png(1_300_000),
    "png-inflating-chunks": lambda: hostile.inflating_chunk_png(16 * MB),
    "png-exif-tags": lambda: hostile.exif_png(64_000),
    "webp-many-frames": lambda: hostile.many_frame_webp(16 * MB),
}


@cache
def hostile_image(family: str) -> tuple[bytes, bytes]:
    """A hostile image's bytes and their base64 (about 21 MB for 16 MB), built once."""
    raw = HOSTILE_IMAGES[family]()
    return raw, base64.b64encode(raw)


def json_post(client: httpx.AsyncClient, url: str, body: bytes) -> Awaitable[httpx.Response]:
    return client.post(url, content=body, headers={"content-type": "application/json"})


async def hostile_upload(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """One family of hostile image (by turns), to /v1/sdxl, /v1/jobs or /v1/images/edits (by turns)."""
    families = sorted(HOSTILE_IMAGES)
    raw, encoded = hostile_image(families[seed % len(families)])
    route = (seed // len(families)) % 3
    if route == 0:
        return status(
            await json_post(client, f"{url}/v1/sdxl", b'{"prompt": "a", "image": "' + encoded + b'"}')
        )
    if route == 1:
        body = b'{"service": "sdxl", "input": {"prompt": "a", "image": "' + encoded + b'"}}'
        return status(await json_post(client, f"{url}/v1/jobs", body))
    files = {"image": ("image.png", raw, "application/octet-stream")}
    return status(await client.post(f"{url}/v1/images/edits", data={"prompt": "a"}, files=files))


NESTED = ("[" * 100_000 + "]" * 100_000).encode()
HUGE_SHAPES = ([10**6, 10**6], [0, 2**63], [0, 2**40, 2**40])


async def nested_json(client: httpx.AsyncClient, url: str, seed: int) -> str:
    return status(await json_post(client, f"{url}/v1/sdxl", NESTED))


async def long_numbers(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """A 5,000-digit seed on /v1/sdxl, or 5,000-digit steps on a streamed OpenAI request (by turns)."""
    if seed % 2:
        body = {"prompt": "a", "stream": True, "partial_images": 2, "num_inference_steps": "9" * 5000}
        return status(await client.post(f"{url}/v1/images/generations", json=body))
    return status(await json_post(client, f"{url}/v1/sdxl", b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}"))


async def huge_tensor(client: httpx.AsyncClient, url: str, seed: int) -> str:
    shape = HUGE_SHAPES[seed % len(HUGE_SHAPES)]
    latents = {"dtype": "float32", "shape": shape, "data": ""}
    return status(await client.post(f"{url}/v1/sdxl", json={"prompt": "a", **SMALL, "latents": latents}))


async def bad_base64(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """Base64 that is not: an image, a mask, a melody, a tensor's data (by turns)."""
    junk = "@@not base64@@" * 1000
    bodies = [
        ("/v1/sdxl", {"prompt": "a", "image": junk}),
        ("/v1/sdxl", {"prompt": "a", "image": b64(small_png()), "mask_image": junk}),
        ("/v1/musicgen", {"prompt": "a", "melody": junk}),
        ("/v1/sdxl", {"prompt": "a", "latents": {"dtype": "float32", "shape": [1, 4, 8, 8], "data": junk}}),
    ]
    path, body = bodies[seed % len(bodies)]
    return status(await client.post(f"{url}{path}", json=body))


async def big_prompt(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """A prompt of 8 MB: a body within the limit that validation refuses."""
    return status(await client.post(f"{url}/v1/sdxl", json={"prompt": "x" * (8 * MB), "seed": seed}))


async def raw_post(
    url: str, path: str, headers: dict[str, str], chunks: Iterable[bytes], pause_s: float
) -> str:
    """A POST written by hand (so that its body may be too long, chunked without end, or slow): the
    head, then `chunks` with `pause_s` before each; the status of the answer, read as soon as it comes
    (the service answers before the body is done), or `no-answer`."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = f"POST {parts.path}{path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"

    async def write() -> None:
        writer.write(head.encode())
        for chunk in chunks:
            await asyncio.sleep(pause_s)
            writer.write(chunk)
            await writer.drain()

    sending = asyncio.create_task(write())
    try:
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        return line.split()[1].decode() if line.startswith(b"HTTP/") else "no-answer"
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)  # a reset write is expected
        writer.close()


JSON = {"content-type": "application/json"}


async def declared_over_limit(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """A body whose Content-Length is over the limit: refused from its header, before it is read."""
    declared = {**JSON, "content-length": str(LIMITS.max_body_bytes + 1)}
    return await raw_post(url, "/v1/sdxl", declared, [b"{" + b" " * 65_535], 0.0)


async def chunked_over_limit(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """A chunked body that goes on past the limit: read up to it, then refused."""
    chunk = b" " * (1 << 20)
    pieces = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * (LIMITS.max_body_bytes // len(chunk) + 2)
    return await raw_post(url, "/v1/sdxl", {**JSON, "transfer-encoding": "chunked"}, pieces, 0.0)


async def slow_body(client: httpx.AsyncClient, url: str, seed: int) -> str:
    """A body that says 4 KB and trickles in a byte every 2 s, until its 408."""
    pieces = [b'{"prompt": "'] + [b"a"] * 200
    return await raw_post(url, "/v1/sdxl", {**JSON, "content-length": "4096"}, pieces, 2.0)


MIX = [
    Kind("sdxl", 14, OK, sdxl),
    Kind("sdxl-img2img", 5, OK, img2img),
    Kind("musicgen", 8, OK, musicgen),
    Kind("job", 8, OK, job),
    Kind("openai-generation", 6, OK, openai_generation),
    Kind("openai-edit", 4, OK, openai_edit),
    Kind("cog-prediction", 4, OK, cog_prediction),
    Kind("bomb-hostile-image", 12, frozenset({"422"}), hostile_upload),
    Kind("bomb-declared-over-limit", 2, frozenset({"413"}), declared_over_limit),
    Kind("bomb-chunked-over-limit", 2, frozenset({"413"}), chunked_over_limit),
    Kind("bomb-nested-json", 4, frozenset({"400"}), nested_json),
    Kind("bomb-long-number", 4, frozenset({"400", "422"}), long_numbers),
    Kind("bomb-huge-tensor-shape", 4, frozenset({"422"}), huge_tensor),
    Kind("bomb-bad-base64", 5, frozenset({"422"}), bad_base64),
    Kind("bomb-8MB-prompt", 3, frozenset({"422"}), big_prompt),
    Kind("bomb-slow-body", 2, frozenset({"408"}), slow_body),
]


# --- memory ---


def rss_mb(processes: Iterable[psutil.Process]) -> float:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def named(part: str) -> list[psutil.Process]:
    """This Ray's processes whose command line names `part` (Ray puts actors' names there)."""
    return [process for process in service_processes() if any(part in word for word in _cmdline(process))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def service_processes() -> list[psutil.Process]:
    """Every process of the Ray this benchmark started: its descendants (GCS, raylet, dashboard,
    workers, Serve's controller, proxy and replicas)."""
    return psutil.Process().children(recursive=True)


@dataclass
class Sample:
    t_s: float
    ingress_mb: float
    proxy_mb: float
    service_mb: float
    answer_ms: float  # a GET the ingress answers itself: how responsive its event loop is
    ingress_pids: list[int]
    sent: int  # so far
    statuses: dict[str, int]  # answers so far, by class: 2xx, 4xx, 5xx, other (no answer)


def status_class(outcome: str) -> str:
    return f"{outcome[0]}xx" if outcome.isdecimal() else "other"


@dataclass
class Tally:
    """What was sent, and what came back, per kind."""

    sent: Counter = field(default_factory=Counter)
    skipped: int = 0
    outcomes: dict[str, Counter] = field(default_factory=dict)

    async def record(self, kind: Kind, outcome: Awaitable[str]) -> None:
        try:
            answer = await outcome
        except (TimeoutError, httpx.HTTPError, OSError) as error:
            answer = type(error).__name__
        self.outcomes.setdefault(kind.name, Counter())[answer] += 1

    def by_class(self) -> dict[str, int]:
        classes: Counter = Counter()
        for outcomes in self.outcomes.values():
            for outcome, count in outcomes.items():
                classes[status_class(outcome)] += count
        return {name: classes[name] for name in ("2xx", "4xx", "5xx", "other")}


async def take_sample(client: httpx.AsyncClient, url: str, started: float, tally: Tally) -> Sample:
    before = time.perf_counter()
    try:
        await client.get(f"{url}/v1/sdxl/adapters")
        answer_ms = (time.perf_counter() - before) * 1000
    except httpx.HTTPError:
        answer_ms = float("nan")
    ingress, proxy = (
        await asyncio.to_thread(named, f"ServeReplica:{APP}:Ingress"),
        await asyncio.to_thread(named, "ProxyActor"),
    )
    return Sample(
        t_s=time.perf_counter() - started,
        ingress_mb=rss_mb(ingress),
        proxy_mb=rss_mb(proxy),
        service_mb=await asyncio.to_thread(lambda: rss_mb(service_processes())),
        answer_ms=answer_ms,
        ingress_pids=[process.pid for process in ingress],
        sent=sum(tally.sent.values()),
        statuses=tally.by_class(),
    )


# --- the run ---


async def sampling(
    client: httpx.AsyncClient, url: str, every_s: float, started: float, tally: Tally, samples: list[Sample]
) -> None:
    while True:
        samples.append(await take_sample(client, url, started, tally))
        await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - started) % every_s))


async def traffic(
    url: str, seconds: float, rate: float, every_s: float, seed: int
) -> tuple[list[Sample], Tally]:
    """Sends the mix for `seconds`, sampling memory every `every_s`; waits for what is still in flight
    (at most DRAIN_S), and takes a last sample."""
    rng, tally, samples = random.Random(seed), Tally(), []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        started = time.perf_counter()
        sampler = asyncio.create_task(sampling(client, url, every_s, started, tally, samples))
        in_flight: set[asyncio.Task] = set()
        for index, at in enumerate(arrival_times(rate, seconds, rng)):
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - started)))
            in_flight = {task for task in in_flight if not task.done()}
            if len(in_flight) >= MAX_IN_FLIGHT:
                tally.skipped += 1
                continue
            kind = rng.choices(MIX, [k.weight for k in MIX])[0]
            tally.sent[kind.name] += 1
            in_flight.add(asyncio.create_task(tally.record(kind, kind.send(client, url, index))))
        if in_flight:
            await asyncio.wait(in_flight, timeout=DRAIN_S)
        sampler.cancel()
        samples.append(await take_sample(client, url, started, tally))
    return samples, tally


def growth(samples: list[Sample], warm_up_s: float, key: str = "ingress_mb") -> dict[str, float]:
    """The first sample (before any request), the medians of the first and last quarter of the samples
    after warm-up (medians: a sample may catch a 21 MB body in flight), and the growth from the first
    quarter to the last."""
    after = [getattr(s, key) for s in samples if s.t_s >= warm_up_s]
    start = getattr(samples[0], key)
    if len(after) < 2:
        return {"start_mb": start, "first_mb": float("nan"), "last_mb": float("nan"), "growth": float("nan")}
    quarter = max(1, len(after) // 4)
    first, last = statistics.median(after[:quarter]), statistics.median(after[-quarter:])
    return {"start_mb": start, "first_mb": first, "last_mb": last, "growth": (last - first) / first}


def soak_application(folders: dict[str, str], jobs_folder: str) -> dict:
    """The local config's graph (tiny models, small batches), its jobs in a folder of this run's."""
    app = application(APP, folders, max_batch_size=4, max_queued_requests=32)
    app["args"]["ingress"] = {
        "jobs": {"store_path": f"{jobs_folder}/jobs.sqlite3", "output_dir": f"{jobs_folder}/outputs"}
    }
    return app


def soak(
    minutes: float, rate: float, sample_s: float, warm_up_s: float, folders: dict[str, str], seed: int = 0
) -> dict[str, Any]:
    """The soak on a graph of its own; the samples, what each kind got, and the ingress's growth."""
    for family in HOSTILE_IMAGES:  # built before the clock starts
        hostile_image(family)
    with tempfile.TemporaryDirectory() as jobs_folder, graph(soak_application(folders, jobs_folder)) as base:
        samples, tally = asyncio.run(traffic(f"{base}/{APP}", minutes * 60, rate, sample_s, seed))
    return {
        "minutes": minutes,
        "rate_per_s": rate,
        "warm_up_s": warm_up_s,
        "samples": [asdict(sample) for sample in samples],
        "kinds": kind_rows(tally),
        "skipped": tally.skipped,
        "ingress": growth(samples, warm_up_s),
        "service": growth(samples, warm_up_s, "service_mb"),
        "proxy": growth(samples, warm_up_s, "proxy_mb"),
    }


def kind_rows(tally: Tally) -> list[dict[str, Any]]:
    """Per kind: sent, every outcome, and how many were not what the kind expects."""
    rows = []
    for kind in MIX:
        outcomes = tally.outcomes.get(kind.name, Counter())
        rows.append(
            {
                "kind": kind.name,
                "sent": tally.sent[kind.name],
                "expected": "/".join(sorted(kind.expected)),
                "unexpected": sum(n for o, n in outcomes.items() if o not in kind.expected),
                "outcomes": " ".join(f"{o}:{n}" for o, n in sorted(outcomes.items())),
            }
        )
    return rows


def report(result: dict[str, Any]) -> None:
    rows = [
        {
            "t_min": sample["t_s"] / 60,
            "ingress_mb": sample["ingress_mb"],
            "proxy_mb": sample["proxy_mb"],
            "service_mb": sample["service_mb"],
            "ingress_answer_ms": sample["answer_ms"],
            "sent": sample["sent"],
            **sample["statuses"],
        }
        for sample in result["samples"]
    ]
    print_table(
        f"Soak, {result['minutes']:g} min at {result['rate_per_s']:g} requests/s: RSS over time", rows
    )
    print_table("Requests per kind", result["kinds"])
    for name in ("ingress", "proxy", "service"):
        figures = result[name]
        print(
            f"{name}: {figures['start_mb']:.0f} MB idle at the start; {figures['first_mb']:.0f} MB -> "
            f"{figures['last_mb']:.0f} MB (medians of the first and last quarter after "
            f"{result['warm_up_s']:.0f} s): {figures['growth']:+.1%}"
        )
    # A replica that restarted began again from nothing: its memory says nothing of the run's.
    pids = {tuple(sample["ingress_pids"]) for sample in result["samples"]}
    if len(pids) > 1:
        print(
            f"the ingress replica restarted during the run (processes {sorted(pids)}): growth not comparable"
        )
    verdict = "within" if abs(result["ingress"]["growth"]) <= TARGET else "NOT within"
    print(f"ingress growth {verdict} the {TARGET:.0%} target")
    print(f"arrivals skipped (too many in flight): {result['skipped']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the mix is sent")
    parser.add_argument("--rate", type=float, default=2.0, help="arrivals per second (Poisson)")
    parser.add_argument("--sample-s", type=float, default=None, help="default: 30, or minutes*60/18 if less")
    parser.add_argument("--warm-up-min", type=float, default=None, help="default: a sixth of the run")
    parser.add_argument("--models", default=None, help="folder for the benchmark's models (default: a cache)")
    args = parser.parse_args()
    args.full_size = False
    sample_s = args.sample_s or min(30.0, args.minutes * 60 / 18)
    warm_up_s = 60 * (args.warm_up_min if args.warm_up_min is not None else args.minutes / 6)
    result = soak(args.minutes, args.rate, sample_s, warm_up_s, models(args))
    report(result)
    write_results("soak", result)


if __name__ == "__main__":
    main()
