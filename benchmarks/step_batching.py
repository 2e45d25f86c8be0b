"""SDXL under mixed open-loop load, `batching: request` and `batching: step` side by side on one
graph: Poisson arrivals of requests of 4-50 steps, two sizes and mixed guidance, at 50 %, 80 % and
110 % of the capacity of request-level batching (its closed-loop throughput at concurrency 8,
measured first in the same run). Prints throughput and p50/p99 latency of short (<= 10 steps) and
long requests per mode and rate. Loopback only; every loop is bounded in count and time.

    python -m benchmarks.step_batching [--full-size] [--seconds 15]
"""

import asyncio
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import application, arguments, graph, models, percentiles, print_table, write_results

MODES = ("request", "step")
LOADS = (0.5, 0.8, 1.1)
STEPS = (4, 10, 25, 50)
SIZES = (64, 128)
GUIDANCE = (1.0, 5.0, 9.0)
SHORT_STEPS = 10
DRAIN_S = 180.0
CAPACITY_S = 10.0


def mixed_request(rng: random.Random, seed: int) -> dict:
    size = rng.choice(SIZES)
    return {
        "prompt": "a lighthouse at dawn",
        "height": size,
        "width": size,
        "num_inference_steps": rng.choice(STEPS),
        "guidance_scale": rng.choice(GUIDANCE),
        "seed": seed,
    }


def capacity(url: str, concurrency: int = 8) -> float:
    """Requests per second a closed loop of `concurrency` clients gets, over CAPACITY_S."""
    rng, done = random.Random(1), []
    deadline = time.perf_counter() + CAPACITY_S

    def client_loop(worker: int) -> None:
        with httpx.Client(timeout=DRAIN_S) as client:
            while time.perf_counter() < deadline:
                client.post(f"{url}/v1/sdxl", json=mixed_request(rng, worker)).raise_for_status()
                done.append(1)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client_loop, range(concurrency)))
    return len(done) / (time.perf_counter() - started)


async def open_loop(url: str, rate: float, seconds: float, rng: random.Random) -> dict:
    latencies: dict[str, list[float]] = {"short": [], "long": []}
    statuses: Counter[str] = Counter()

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        started = time.perf_counter()
        try:
            response = await client.post(f"{url}/v1/sdxl", json=body)
        except httpx.HTTPError as error:
            statuses[type(error).__name__] += 1
            return
        statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            kind = "short" if body["num_inference_steps"] <= SHORT_STEPS else "long"
            latencies[kind].append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=DRAIN_S, limits=limits) as client:
        tasks, started = [], time.perf_counter()
        next_at = rng.expovariate(rate)
        while next_at < seconds:
            await asyncio.sleep(max(0.0, next_at - (time.perf_counter() - started)))
            tasks.append(asyncio.create_task(one(client, mixed_request(rng, len(tasks)))))
            next_at += rng.expovariate(rate)
        await asyncio.wait(tasks, timeout=DRAIN_S)
        elapsed = time.perf_counter() - started
    return {
        "sent": len(tasks),
        "ok_per_s": statuses.get("200", 0) / elapsed,
        "statuses": dict(statuses),
        "latency": {kind: percentiles(values) for kind, values in latencies.items()},
    }


def main() -> None:
    args = arguments(__doc__)
    seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 15.0
    folders = models(args)
    applications = [
        application(
            mode, folders, 8, user_config={"max_batch_size": 8, "batching": mode}, max_queued_requests=-1
        )
        for mode in MODES
    ]
    rows, runs = [], []
    with graph(*applications) as base:
        full = capacity(f"{base}/request")
        for load in LOADS:
            for mode in MODES:
                result = asyncio.run(open_loop(f"{base}/{mode}", load * full, seconds, random.Random(7)))
                runs.append({"mode": mode, "load": load, **result})
                latency = result["latency"]
                rows.append(
                    {
                        "load": load,
                        "batching": mode,
                        "rate_per_s": load * full,
                        "ok_per_s": result["ok_per_s"],
                        "short_p50_ms": latency["short"].get("p50_ms", float("nan")),
                        "short_p99_ms": latency["short"].get("p99_ms", float("nan")),
                        "long_p50_ms": latency["long"].get("p50_ms", float("nan")),
                        "long_p99_ms": latency["long"].get("p99_ms", float("nan")),
                        "statuses": " ".join(f"{k}:{v}" for k, v in sorted(result["statuses"].items())),
                    }
                )
    print_table(f"Mixed SDXL load; request-level capacity {full:.2f} requests/s; {seconds:g} s per run", rows)
    write_results("step_batching", {"capacity_per_s": full, "seconds": seconds, "runs": runs})


if __name__ == "__main__":
    main()
