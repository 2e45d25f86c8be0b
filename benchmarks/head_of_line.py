"""Head-of-line blocking in the model deployments, over HTTP on one graph, `batching: request` and
`batching: step` side by side: a short request arriving while a long one runs (SDXL: 4 steps behind
100; MusicGen: a 1 s track behind a 30 s one), against the short request alone; and, on the direct
engines in the same run, what a step over 2 images (a token over 2 tracks) costs against a step over
1: the floor any scheduler that shares steps works within. The target for step-level batching is
short-behind-long / short-alone <= 1.5 for both.

    python -m benchmarks.head_of_line [--full-size]
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import (
    MODEL_CPUS,
    application,
    arguments,
    graph,
    models,
    print_table,
    write_results,
)
from leap_ray.loadtest import percentiles

ROUNDS = 5
SIZE = {"height": 128, "width": 128}
CASES = {  # model: (route, short request, long request)
    "sdxl": (
        "/v1/sdxl",
        {"prompt": "a short one", **SIZE, "num_inference_steps": 4},
        {"prompt": "a long one", **SIZE, "num_inference_steps": 100},
    ),
    "musicgen": (
        "/v1/musicgen",
        {"prompt": "a short one", "duration": 1},
        {"prompt": "a long one", "duration": 30},
    ),
}
ARRIVAL_S = 0.5  # the short request arrives this long after the long one


def step_cost_ms(folders: dict[str, str]) -> dict[str, float]:
    """Milliseconds per SDXL denoising step over 1 and 2 images ((time of 22 steps - time of 2) / 20,
    so that prompt encoding and decoding cancel out), and per MusicGen token over 1 and 2 tracks
    (likewise, 3 s tracks against 1 s ones)."""
    from leap_ray.api.musicgen import MusicGenRequest
    from leap_ray.api.sdxl import SDXLRequest
    from leap_ray.engines.contract import generate
    from leap_ray.engines.musicgen import MusicGenEngine
    from leap_ray.engines.sdxl import SDXLEngine

    sdxl = SDXLEngine(folders["sdxl"], threads=MODEL_CPUS)
    musicgen = MusicGenEngine(folders["musicgen-melody"], threads=MODEL_CPUS)

    def image_seconds(images: int, steps: int) -> float:
        request = SDXLRequest(
            prompt="a", **SIZE, num_inference_steps=steps, num_images_per_prompt=images, seed=1
        )
        return timed(lambda: generate(sdxl, [request]))

    def track_seconds(tracks: int, duration: float) -> float:
        requests = [MusicGenRequest(prompt="a", duration=duration, seed=seed) for seed in range(tracks)]
        return timed(lambda: generate(musicgen, requests))

    image_seconds(1, 2), track_seconds(1, 1)  # warm up
    cost = {}
    for count in (1, 2):
        many, few = (min(image_seconds(count, steps) for _ in range(3)) for steps in (22, 2))
        cost[f"sdxl_batch_{count}"] = (many - few) / 20 * 1000
        many, few = (min(track_seconds(count, seconds) for _ in range(3)) for seconds in (3, 1))
        cost[f"musicgen_batch_{count}"] = (many - few) / 100 * 1000  # 2 s at 50 frames per second
    return cost


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def post(client: httpx.Client, url: str, body: dict, seed: int) -> float:
    started = time.perf_counter()
    response = client.post(url, json={**body, "seed": seed})
    response.raise_for_status()
    return time.perf_counter() - started


def measure(client: httpx.Client, pool: ThreadPoolExecutor, url: str, short: dict, long: dict) -> dict:
    """p50 of the short request alone and behind a long one, and their ratio."""
    post(client, url, short, 0)  # warm up
    alone = [post(client, url, short, seed) for seed in range(ROUNDS)]
    behind = []
    for seed in range(ROUNDS):
        long_run = pool.submit(post, client, url, long, seed)
        time.sleep(ARRIVAL_S)
        behind.append(post(client, url, short, seed))
        long_run.result()
    short_alone, short_behind = percentiles(alone)["p50_ms"], percentiles(behind)["p50_ms"]
    return {
        "short_alone_p50_ms": short_alone,
        "short_behind_long_p50_ms": short_behind,
        "head_of_line_ratio": short_behind / short_alone,
    }


def main() -> None:
    args = arguments(__doc__)
    folders = models(args)
    step_ms = step_cost_ms(folders)
    modes = ("request", "step")
    applications = [application(mode, folders, max_batch_size=8, batching=mode) for mode in modes]
    rows = []
    with graph(*applications) as base, httpx.Client(timeout=600) as client, ThreadPoolExecutor(1) as pool:
        for model, (route, short, long) in CASES.items():
            for mode in modes:
                row = {
                    "model": model,
                    "batching": mode,
                    **measure(client, pool, f"{base}/{mode}{route}", short, long),
                }
                row["step_cost_ratio_2_over_1"] = step_ms[f"{model}_batch_2"] / step_ms[f"{model}_batch_1"]
                rows.append(row)
    print_table("Head-of-line: SDXL 4 steps behind 100, MusicGen 1 s behind 30 s", rows)
    write_results(
        "head_of_line", {"rounds": ROUNDS, "arrival_s": ARRIVAL_S, "step_ms": step_ms, "rows": rows}
    )


if __name__ == "__main__":
    main()
