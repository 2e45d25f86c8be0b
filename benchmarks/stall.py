"""What one big image costs the requests behind it: a small SDXL request (64², 4 steps) alone, and
arriving while a 2048² request (1 step) runs, on one replica's batcher (`StepScheduler` over the
engine's step batch, as a deployment drives it), with one lane and with the big image in its own lane
(`own_lane_above`), side by side. The process keeps to the replica's CPUs (MODEL_CPUS), so the lanes
share what one replica has. Target: small-behind-big / small-alone <= 3.

    python -m benchmarks.stall [--big 2048] [--rounds 3]
"""

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from benchmarks.common import MODEL_CPUS, print_table, write_results
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.config import BatchingConfig
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.model_sources import tiny_model
from leap_ray.serve.step_scheduler import StepScheduler

SMALL = {"prompt": "a small one", "height": 64, "width": 64, "num_inference_steps": 4}
ARRIVAL_S = 0.3  # the small request arrives this long after the big one


async def seconds(scheduler: StepScheduler, request: SDXLRequest) -> float:
    started = time.perf_counter()
    outcome = await scheduler.generate(request, lambda: False, None)
    if isinstance(outcome, Exception):
        raise outcome
    return time.perf_counter() - started


async def behind_big(scheduler: StepScheduler, big: SDXLRequest) -> tuple[float, float]:
    """The small request's seconds when it arrives ARRIVAL_S into the big one's, and the big one's."""
    big_run = asyncio.ensure_future(seconds(scheduler, big))
    await asyncio.sleep(ARRIVAL_S)
    small = await seconds(scheduler, SDXLRequest(**SMALL, seed=2))
    return small, await big_run


def measure(engine: SDXLEngine, big_side: int, rounds: int) -> dict[str, Any]:
    scheduler = StepScheduler(engine.running_batch(8), BatchingConfig(max_batch_size=8))
    big = SDXLRequest(prompt="a big one", height=big_side, width=big_side, num_inference_steps=1, seed=1)

    async def run() -> dict[str, Any]:
        await seconds(scheduler, SDXLRequest(**SMALL, seed=0))  # warm
        alone = [await seconds(scheduler, SDXLRequest(**SMALL, seed=2)) for _ in range(rounds)]
        behind = [await behind_big(scheduler, big) for _ in range(rounds)]
        small_behind = statistics.median(small for small, _ in behind)
        return {
            "lanes": "one" if engine.own_lane_above is None else f"own above {engine.own_lane_above} px",
            "small_alone_s": statistics.median(alone),
            "small_behind_big_s": small_behind,
            "ratio": small_behind / statistics.median(alone),
            "big_s": statistics.median(big_s for _, big_s in behind),
        }

    return asyncio.run(run())


def stall_rows(folder: str, big_side: int, rounds: int, own_lane_above: int) -> list[dict[str, Any]]:
    return [
        measure(SDXLEngine(folder, threads=MODEL_CPUS, own_lane_above=lanes), big_side, rounds)
        for lanes in (None, own_lane_above)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=2048, help="the big request's side in pixels")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:MODEL_CPUS]))
    rows = stall_rows(str(tiny_model("sdxl")), args.big, args.rounds, own_lane_above=1024 * 1024)
    print_table(f"A 64² request behind a {args.big}² one (tiny SDXL, {MODEL_CPUS} CPU)", rows)
    write_results("stall", {"big_side": args.big, "rows": rows})


if __name__ == "__main__":
    main()
