"""SDXL under mixed open-loop load, `batching: request` and `batching: step` side by side on one
graph: Poisson arrivals of requests of 4-50 steps, two sizes and mixed guidance, at 50 %, 80 % and
110 % of the capacity of request-level batching (its closed-loop throughput at concurrency 8,
measured first in the same run). Prints throughput and p50/p99 latency of short (<= 10 steps) and
long requests per mode and rate. Loopback only; every loop is bounded in count and time.

    python -m benchmarks.step_batching [--full-size] [--seconds 15]
"""

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import (
    application,
    arguments,
    graph,
    models,
    open_loop,
    print_table,
    write_results,
)

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


def classed(rng: random.Random, index: int) -> tuple[str, dict, str]:
    body = mixed_request(rng, index)
    return "/v1/sdxl", body, "short" if body["num_inference_steps"] <= SHORT_STEPS else "long"


def main() -> None:
    args = arguments(__doc__, seconds=15.0)
    seconds = args.seconds
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
                rng = random.Random(7)  # the same arrivals for both modes
                result = asyncio.run(open_loop(f"{base}/{mode}", load * full, seconds, rng, classed, DRAIN_S))
                runs.append({"mode": mode, "load": load, **result})
                latency = result["latency"]
                rows.append(
                    {
                        "load": load,
                        "batching": mode,
                        "rate_per_s": load * full,
                        "ok_per_s": result["ok_per_s"],
                        "short_p50_ms": latency.get("short", {}).get("p50_ms", float("nan")),
                        "short_p99_ms": latency.get("short", {}).get("p99_ms", float("nan")),
                        "long_p50_ms": latency.get("long", {}).get("p50_ms", float("nan")),
                        "long_p99_ms": latency.get("long", {}).get("p99_ms", float("nan")),
                        "statuses": " ".join(f"{k}:{v}" for k, v in sorted(result["statuses"].items())),
                    }
                )
    print_table(f"Mixed SDXL load; request-level capacity {full:.2f} requests/s; {seconds:g} s per run", rows)
    write_results("step_batching", {"capacity_per_s": full, "seconds": seconds, "runs": runs})


if __name__ == "__main__":
    main()
