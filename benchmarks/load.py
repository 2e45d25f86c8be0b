"""Open-loop load: Poisson arrivals of mixed SDXL and MusicGen requests at a fixed rate for a bounded
time, below and above saturation. Reports throughput, latency percentiles per model and every
non-2xx by status. Below saturation there should be no errors; above it, only 503s (the queues are
bounded). Loopback only; every loop is bounded in count and time.

    python -m benchmarks.load [--full-size] [--rates 2,20] [--seconds 15]
"""

import asyncio
import random
import sys
import time
from collections import Counter

import httpx

from benchmarks.common import (
    MUSIC_WORK,
    SDXL_WORK,
    application,
    arguments,
    graph,
    models,
    percentiles,
    print_table,
    write_results,
)

SDXL_SHARE = 0.7
DRAIN_S = 120.0
QUEUES = {"max_queued_requests": 8}


def option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


async def open_loop(url: str, rate: float, seconds: float, rng: random.Random) -> dict:
    """Sends requests at Poisson arrival times whatever the answers, then waits (bounded) for them."""
    latencies: dict[str, list[float]] = {"sdxl": [], "musicgen": []}
    statuses: Counter[str] = Counter()

    async def one(client: httpx.AsyncClient, model: str, body: dict) -> None:
        started = time.perf_counter()
        try:
            response = await client.post(f"{url}/v1/{model}", json=body)
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                latencies[model].append(time.perf_counter() - started)
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=DRAIN_S, limits=limits) as client:
        tasks, started = [], time.perf_counter()
        next_at = rng.expovariate(rate)
        while next_at < seconds:
            await asyncio.sleep(max(0.0, next_at - (time.perf_counter() - started)))
            model = "sdxl" if rng.random() < SDXL_SHARE else "musicgen"
            body = {**(SDXL_WORK if model == "sdxl" else MUSIC_WORK), "seed": len(tasks)}
            tasks.append(asyncio.create_task(one(client, model, body)))
            next_at += rng.expovariate(rate)
        await asyncio.wait(tasks, timeout=DRAIN_S)
        elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    return {
        "rate_per_s": rate,
        "sent": len(tasks),
        "ok_per_s": ok / elapsed,
        "statuses": dict(statuses),
        "latency": {model: percentiles(values) for model, values in latencies.items()},
    }


def main() -> None:
    args = arguments(__doc__)
    rates = [float(rate) for rate in option("--rates", "2,20").split(",")]
    seconds = float(option("--seconds", "15"))
    folders = models(args)
    rng = random.Random(0)
    with graph(application("load", folders, 8, **QUEUES)) as base:
        results = [asyncio.run(open_loop(f"{base}/load", rate, seconds, rng)) for rate in rates]
    rows = []
    for result in results:
        rows.append(
            {
                "rate_per_s": result["rate_per_s"],
                "sent": result["sent"],
                "ok_per_s": result["ok_per_s"],
                "sdxl_p50_ms": result["latency"]["sdxl"].get("p50_ms", float("nan")),
                "sdxl_p99_ms": result["latency"]["sdxl"].get("p99_ms", float("nan")),
                "music_p50_ms": result["latency"]["musicgen"].get("p50_ms", float("nan")),
                "music_p99_ms": result["latency"]["musicgen"].get("p99_ms", float("nan")),
                "statuses": " ".join(f"{k}:{v}" for k, v in sorted(result["statuses"].items())),
            }
        )
    print_table(f"Open-loop load, {seconds:g} s per rate, {SDXL_SHARE:.0%} SDXL", rows)
    write_results("load", {"workloads": {"sdxl": SDXL_WORK, "musicgen": MUSIC_WORK}, "runs": results})


if __name__ == "__main__":
    main()
