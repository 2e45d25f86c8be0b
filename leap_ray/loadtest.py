"""Load-testing a running service (`leap-ray loadtest --url URL`): open-loop Poisson arrivals at a
rate, or ramping from one rate to another, of a mix of SDXL and MusicGen requests of chosen sizes,
for a bounded time. Reports throughput, latency percentiles per request class and every status, and
writes JSON. It works against any URL (with an API key); it needs the light install only."""

import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# The next request of an open loop: (path, JSON body, the class it counts in).
NextRequest = Callable[[random.Random, int], tuple[str, dict, str]]


@dataclass(frozen=True)
class RequestClass:
    """One kind of request in the mix, with its share of the arrivals."""

    name: str
    path: str
    body: dict[str, Any]
    weight: float


def parse_mix(spec: str) -> RequestClass:
    """`sdxl[:WxH[:STEPS]]=WEIGHT` or `musicgen[:SECONDS]=WEIGHT` (weight 1 when left out), e.g.
    `sdxl:1024x1024:30=3`, `musicgen:10=1`."""
    kind, _, weight = spec.partition("=")
    model, *sizes = kind.split(":")
    try:
        share = float(weight or 1)
        if model == "sdxl" and len(sizes) <= 2:
            width, height = (int(n) for n in (sizes[0] if sizes else "1024x1024").split("x"))
            steps = int(sizes[1]) if len(sizes) > 1 else 30
            body = {
                "prompt": "a lighthouse at dawn",
                "width": width,
                "height": height,
                "num_inference_steps": steps,
            }
            return RequestClass(kind, "/v1/sdxl", body, share)
        if model == "musicgen" and len(sizes) <= 1:
            body = {"prompt": "lo-fi beat with warm piano", "duration": float(sizes[0]) if sizes else 10.0}
            return RequestClass(kind, "/v1/musicgen", body, share)
    except ValueError:
        pass
    raise ValueError(f"cannot read the mix {spec!r}: sdxl[:WxH[:STEPS]]=WEIGHT or musicgen[:SECONDS]=WEIGHT")


def mixed(classes: list[RequestClass]) -> NextRequest:
    """Requests drawn from the mix by weight, each with its own seed."""

    def next_request(rng: random.Random, index: int) -> tuple[str, dict, str]:
        chosen = rng.choices(classes, [c.weight for c in classes])[0]
        return chosen.path, {**chosen.body, "seed": index}, chosen.name

    return next_request


def arrival_times(
    rate: float, seconds: float, rng: random.Random, ramp_to: float | None = None
) -> list[float]:
    """Poisson arrivals over `seconds`, the rate going linearly from `rate` to `ramp_to` (thinning)."""
    end_rate = rate if ramp_to is None else ramp_to
    peak, times, now = max(rate, end_rate), [], 0.0
    while True:
        now += rng.expovariate(peak)
        if now >= seconds:
            return times
        if rng.random() < (rate + (end_rate - rate) * now / seconds) / peak:
            times.append(now)


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95 and p99 in milliseconds (none for no values)."""
    if len(seconds) < 2:
        return {f"p{q}_ms": seconds[0] * 1000 for q in (50, 95, 99)} if seconds else {}
    cuts = statistics.quantiles([s * 1000 for s in seconds], n=100, method="inclusive")
    return {"p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98]}


async def open_loop(
    url: str,
    rate: float,
    seconds: float,
    rng: random.Random,
    next_request: NextRequest,
    drain_s: float,
    ramp_to: float | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Sends `next_request`s at Poisson arrival times for `seconds` (the rate ramping to `ramp_to`
    when given) whatever the answers, then waits (at most `drain_s`) for them. Returns what was
    sent, 200s per second, every status, and per class the count done and latency percentiles."""
    arrivals = arrival_times(rate, seconds, rng, ramp_to)
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[str] = Counter()

    async def one(client: httpx.AsyncClient, path: str, body: dict, kind: str) -> None:
        started = time.perf_counter()
        try:
            response = await client.post(f"{url}{path}", json=body)
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1
            return
        statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            latencies[kind].append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=drain_s, limits=limits, headers=headers) as client:
        tasks, started = [], time.perf_counter()
        for at in arrivals:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - started)))
            tasks.append(asyncio.create_task(one(client, *next_request(rng, len(tasks)))))
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
        elapsed = time.perf_counter() - started
    return {
        "sent": len(tasks),
        "elapsed_s": elapsed,
        "ok_per_s": statuses.get("200", 0) / elapsed,
        "done": {kind: len(values) for kind, values in latencies.items()},
        "statuses": dict(statuses),
        "latency": {kind: percentiles(values) for kind, values in latencies.items()},
    }


def report(result: dict[str, Any], classes: list[RequestClass]) -> str:
    """The result as a table: a row per request class, then every status."""
    lines = [f"{'class':<24}{'done':>6}{'per s':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"]
    for request_class in classes:
        done = result["done"].get(request_class.name, 0)
        latency = result["latency"].get(request_class.name, {})
        cells = [f"{latency.get(f'p{q}_ms', float('nan')):>10.0f}" for q in (50, 95, 99)]
        lines.append(f"{request_class.name:<24}{done:>6}{done / result['elapsed_s']:>8.2f}{''.join(cells)}")
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(result["statuses"].items()))
    lines.append(f"sent {result['sent']} in {result['elapsed_s']:.1f} s; statuses {statuses}")
    return "\n".join(lines)
