"""Mixed open-loop load, `batching: request` and `batching: step` side by side on one graph, per
model: Poisson arrivals at 50 %, 80 % and 110 % of the capacity of request-level batching (its
closed-loop throughput at concurrency 8, measured first in the same run). SDXL: requests of 4-50
steps, two sizes, mixed guidance; latency of short (<= 10 steps) and long ones. MusicGen: tracks of
1, 5, 10, 30 or 60 s; latency per duration and audio seconds served per second. Loopback only;
every loop is bounded in count and time.

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
    print_table,
    write_results,
)
from leap_ray.loadtest import NextRequest, open_loop

MODES = ("request", "step")
LOADS = (0.5, 0.8, 1.1)
STEPS = (4, 10, 25, 50)
SIZES = (64, 128)
GUIDANCE = (1.0, 5.0, 9.0)
SHORT_STEPS = 10
DURATIONS = (1, 5, 10, 30, 60)
DRAIN_S = 180.0
CAPACITY_S = 10.0


def sdxl_request(rng: random.Random, seed: int) -> tuple[str, dict, str]:
    size = rng.choice(SIZES)
    body = {
        "prompt": "a lighthouse at dawn",
        "height": size,
        "width": size,
        "num_inference_steps": rng.choice(STEPS),
        "guidance_scale": rng.choice(GUIDANCE),
        "seed": seed,
    }
    return "/v1/sdxl", body, "short" if body["num_inference_steps"] <= SHORT_STEPS else "long"


def musicgen_request(rng: random.Random, seed: int) -> tuple[str, dict, str]:
    duration = rng.choice(DURATIONS)
    body = {
        "prompt": "lo-fi beat",
        "duration": duration,
        "guidance_scale": rng.choice((3.0, 5.0)),
        "seed": seed,
    }
    return "/v1/musicgen", body, f"{duration}s"


WORKLOADS = {"sdxl": sdxl_request, "musicgen": musicgen_request}


def capacity(url: str, next_request: NextRequest, concurrency: int = 8) -> float:
    """Requests per second a closed loop of `concurrency` clients gets, over CAPACITY_S."""
    rng, done = random.Random(1), []
    deadline = time.perf_counter() + CAPACITY_S

    def client_loop(worker: int) -> None:
        with httpx.Client(timeout=DRAIN_S) as client:
            while time.perf_counter() < deadline:
                path, body, _ = next_request(rng, worker)
                client.post(f"{url}{path}", json=body).raise_for_status()
                done.append(1)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client_loop, range(concurrency)))
    return len(done) / (time.perf_counter() - started)


def row(model: str, load: float, mode: str, rate: float, result: dict) -> dict:
    latency = result["latency"]
    classes = ("short", "long") if model == "sdxl" else tuple(f"{d}s" for d in DURATIONS)
    found = {
        kind: f"{latency[kind]['p50_ms']:,.0f} / {latency[kind]['p99_ms']:,.0f}" if kind in latency else "-"
        for kind in classes
    }
    extra = {}
    if model == "musicgen":
        served = sum(int(kind[:-1]) * count for kind, count in result["done"].items())
        extra["audio_s_per_s"] = served / result["elapsed_s"]
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(result["statuses"].items()))
    return {
        "load": load,
        "batching": mode,
        "rate_per_s": rate,
        "ok_per_s": result["ok_per_s"],
        **extra,
        **found,
        "statuses": statuses,
    }


def main() -> None:
    args = arguments(__doc__, seconds=15.0)
    seconds = args.seconds
    folders = models(args)
    applications = [application(mode, folders, 8, batching=mode, max_queued_requests=-1) for mode in MODES]
    tables: dict[str, list[dict]] = {model: [] for model in WORKLOADS}
    runs = []
    with graph(*applications) as base:
        for model, next_request in WORKLOADS.items():
            full = capacity(f"{base}/request", next_request)
            for load in LOADS:
                for mode in MODES:
                    rng = random.Random(7)  # the same arrivals for both modes
                    result = asyncio.run(
                        open_loop(f"{base}/{mode}", load * full, seconds, rng, next_request, DRAIN_S)
                    )
                    runs.append(
                        {"model": model, "mode": mode, "load": load, "capacity_per_s": full, **result}
                    )
                    tables[model].append(row(model, load, mode, load * full, result))
            print_table(
                f"Mixed {model} load; capacity {full:.2f} requests/s; {seconds:g} s per run; p50 / p99 ms",
                tables[model],
            )
    write_results("step_batching", {"seconds": seconds, "runs": runs})


if __name__ == "__main__":
    main()
