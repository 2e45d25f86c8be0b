"""Head-of-line blocking in the SDXL deployment, over HTTP on one graph, `batching: request` and
`batching: step` side by side: a short request (4 steps) arriving while a long one (100 steps) runs,
against the short request alone; and, on the direct engine in the same run, what a denoising step
over 2 images costs against a step over 1 (the floor any scheduler that shares steps works within).
Issue 16's target for step-level batching is short-behind-long / short-alone <= 1.5.

    python -m benchmarks.head_of_line [--full-size]
"""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import (
    MODEL_CPUS,
    application,
    arguments,
    graph,
    models,
    percentiles,
    print_table,
    write_results,
)

ROUNDS = 5
SIZE = {"height": 128, "width": 128}
SHORT = {"prompt": "a short one", **SIZE, "num_inference_steps": 4}
LONG = {"prompt": "a long one", **SIZE, "num_inference_steps": 100}
ARRIVAL_S = 0.5  # the short request arrives this long after the long one


def step_cost_ms(folder: str) -> dict[str, float]:
    """Milliseconds per denoising step over 1 and 2 images: (time of 22 steps - time of 2) / 20, so
    that prompt encoding and decoding cancel out."""
    from leap_ray.api.sdxl import SDXLRequest
    from leap_ray.engines.sdxl import SDXLEngine

    engine = SDXLEngine(folder, threads=MODEL_CPUS)

    def seconds(images: int, steps: int) -> float:
        request = SDXLRequest(
            prompt="a", **SIZE, num_inference_steps=steps, num_images_per_prompt=images, seed=1
        )
        started = time.perf_counter()
        engine.generate([request])
        return time.perf_counter() - started

    seconds(1, 2)  # warm up
    cost = {}
    for images in (1, 2):
        long_runs = min(seconds(images, 22) for _ in range(3))
        short_runs = min(seconds(images, 2) for _ in range(3))
        cost[f"batch_{images}"] = (long_runs - short_runs) / 20 * 1000
    return cost


def post(client: httpx.Client, url: str, body: dict, seed: int) -> float:
    started = time.perf_counter()
    response = client.post(f"{url}/v1/sdxl", json={**body, "seed": seed})
    response.raise_for_status()
    return time.perf_counter() - started


def measure(client: httpx.Client, pool: ThreadPoolExecutor, url: str) -> dict[str, float]:
    """p50 of the short request alone and behind a long one, and their ratio."""
    post(client, url, SHORT, 0)  # warm up
    alone = [post(client, url, SHORT, seed) for seed in range(ROUNDS)]
    behind = []
    for seed in range(ROUNDS):
        long_run = pool.submit(post, client, url, LONG, seed)
        time.sleep(ARRIVAL_S)
        behind.append(post(client, url, SHORT, seed))
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
    step_ms = step_cost_ms(folders["sdxl"])
    applications = {
        mode: application(
            mode, folders, max_batch_size=8, user_config={"max_batch_size": 8, "batching": mode}
        )
        for mode in ("request", "step")
    }
    with graph(*applications.values()) as base, httpx.Client(timeout=600) as client:
        with ThreadPoolExecutor(1) as pool:
            rows = [{"batching": mode, **measure(client, pool, f"{base}/{mode}")} for mode in applications]
    for row in rows:
        row.update(
            step_ms_batch_1=step_ms["batch_1"],
            step_ms_batch_2=step_ms["batch_2"],
            step_cost_ratio_2_over_1=step_ms["batch_2"] / step_ms["batch_1"],
        )
    print_table(
        f"Head-of-line: {SHORT['num_inference_steps']} steps behind {LONG['num_inference_steps']}", rows
    )
    write_results("head_of_line", {"rounds": ROUNDS, "arrival_s": ARRIVAL_S, "rows": rows})


if __name__ == "__main__":
    main()
