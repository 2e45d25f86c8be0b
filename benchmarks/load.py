"""Open-loop load: Poisson arrivals of mixed SDXL and MusicGen requests at a fixed rate for a bounded
time, below and above saturation. Reports throughput, latency percentiles per model and every
non-2xx by status. Below saturation there should be no errors; above it, only 503s (the queues are
bounded). Loopback only; every loop is bounded in count and time.

    python -m benchmarks.load [--full-size] [--rates 2,20] [--seconds 15]
"""

import asyncio
import random

from benchmarks.common import (
    MUSIC_WORK,
    SDXL_WORK,
    application,
    arguments,
    graph,
    models,
    print_table,
    write_results,
)
from leap_ray.loadtest import open_loop

SDXL_SHARE = 0.7
DRAIN_S = 120.0
QUEUES = {"max_queued_requests": 8}


def mixed(rng: random.Random, index: int) -> tuple[str, dict, str]:
    model = "sdxl" if rng.random() < SDXL_SHARE else "musicgen"
    return f"/v1/{model}", {**(SDXL_WORK if model == "sdxl" else MUSIC_WORK), "seed": index}, model


def main() -> None:
    args = arguments(__doc__, seconds=15.0, rates="2,20")
    rates, seconds = [float(rate) for rate in args.rates.split(",")], args.seconds
    folders = models(args)
    rng = random.Random(0)
    with graph(application("load", folders, 8, **QUEUES)) as base:
        results = [
            {"rate_per_s": rate, **asyncio.run(open_loop(f"{base}/load", rate, seconds, rng, mixed, DRAIN_S))}
            for rate in rates
        ]
    rows = []
    for result in results:
        rows.append(
            {
                "rate_per_s": result["rate_per_s"],
                "sent": result["sent"],
                "ok_per_s": result["ok_per_s"],
                "sdxl_p50_ms": result["latency"].get("sdxl", {}).get("p50_ms", float("nan")),
                "sdxl_p99_ms": result["latency"].get("sdxl", {}).get("p99_ms", float("nan")),
                "music_p50_ms": result["latency"].get("musicgen", {}).get("p50_ms", float("nan")),
                "music_p99_ms": result["latency"].get("musicgen", {}).get("p99_ms", float("nan")),
                "statuses": " ".join(f"{k}:{v}" for k, v in sorted(result["statuses"].items())),
            }
        )
    print_table(f"Open-loop load, {seconds:g} s per rate, {SDXL_SHARE:.0%} SDXL", rows)
    write_results("load", {"workloads": {"sdxl": SDXL_WORK, "musicgen": MUSIC_WORK}, "runs": results})


if __name__ == "__main__":
    main()
