"""What SDXL's workflows cost, in-process on the engines, side by side in one run (no Ray):

- LoRA adapter sets in one step batch: 8 requests with no adapter, all one set, 2 sets or 4 sets,
  the adapters acting per row (one UNet call for every set) and per set (a call per set per step).
- img2img: strength s runs only the last s × steps steps of a request's schedule.
- The refiner hand-off: the base to denoising_end 0.8, then the refiner, against the base alone for
  all its steps; and the bytes a hand-off carries per image (float16 latents at full size).

    python -m benchmarks.workflows [--size 128] [--steps 20] [--repeats 3]
"""

import argparse
import base64
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from benchmarks.common import MODEL_CPUS, print_table, write_results
from leap_ray.api.handoff import RefineRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.contract import RunningBatch, generate
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine
from leap_ray.model_sources import tiny_model

REQUESTS = 8
ADAPTER_SETS = {"none": [], "one set": [["ink"]], "2 sets": [["ink"], ["paper"]]}
ADAPTER_SETS["4 sets"] = [["ink"], ["paper"], ["ink", "paper"], ["paper@0.5"]]
STRENGTHS = (0.3, 0.6, 1.0)


def drain(batch: RunningBatch, requests: list[SDXLRequest]) -> float:
    """Seconds for the batch to run these requests, all joining at the first step."""
    started = time.perf_counter()
    for request in requests:
        assert batch.admit(request) is None
    while batch.load:
        for _, outcome in batch.step():
            assert not isinstance(outcome, Exception), outcome
    return time.perf_counter() - started


def best_of(repeats: int, run: Callable[[], float]) -> float:
    """The median of `repeats` runs after one warm-up (this machine is noisy)."""
    run()
    return statistics.median(run() for _ in range(repeats))


def loras(names: list[str]) -> list[dict]:
    return [
        {"name": name.split("@")[0], "scale": float(name.split("@")[1]) if "@" in name else 1.0}
        for name in names
    ]


def adapter_rows(engine: SDXLEngine, work: dict, repeats: int) -> list[dict]:
    """Each mix of adapter sets, with the adapters acting per row (one UNet call for all) and as sets
    (a call per set), side by side."""
    rows = []
    for label, sets in ADAPTER_SETS.items():
        requests = [
            SDXLRequest(**work, seed=index, loras=loras(sets[index % len(sets)]) if sets else [])
            for index in range(REQUESTS)
        ]
        for per_row in (True, False):
            engine.per_row_adapters = per_row
            batch = engine.running_batch()
            seconds = best_of(repeats, lambda batch=batch, requests=requests: drain(batch, requests))
            calls_before = batch.unet_calls
            drain(batch, requests)
            acting = "per row" if per_row else "per set"
            calls = batch.unet_calls - calls_before
            rows.append(
                {"adapters": label, "acting": acting, "seconds": seconds, "images_s": REQUESTS / seconds}
            )
            rows[-1]["unet_calls"] = calls
    engine.per_row_adapters = True
    for row in rows:
        row["vs_none"] = rows[0]["seconds"] / row["seconds"]
    return rows


def img2img_rows(engine: SDXLEngine, work: dict, repeats: int) -> list[dict]:
    pixels = np.random.default_rng(0).integers(0, 256, (work["height"], work["width"], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    rows = []
    for strength in (None, *STRENGTHS):
        extra = {} if strength is None else {"image": image, "strength": strength}
        requests = [SDXLRequest(**work, **extra, seed=index) for index in range(REQUESTS)]
        batch = engine.running_batch()
        seconds = best_of(repeats, lambda batch=batch, requests=requests: drain(batch, requests))
        rows.append(
            {"workflow": "text2img" if strength is None else f"img2img {strength}", "seconds": seconds}
        )
    for row in rows:
        row["vs_text2img"] = row["seconds"] / rows[0]["seconds"]
    return rows


def refiner_rows(engine: SDXLEngine, refiner: SDXLRefinerEngine, work: dict, repeats: int) -> list[dict]:
    plain = [SDXLRequest(**work, seed=index) for index in range(REQUESTS)]
    refined = [SDXLRequest(**work, seed=index, refiner={}) for index in range(REQUESTS)]

    def ensemble() -> float:
        started, batch, results = time.perf_counter(), engine.running_batch(), []
        for request in refined:
            assert batch.admit(request) is None
        while batch.load:
            results += batch.step()
        jobs = [RefineRequest(r, o.latents, o.generator_states, o.seeds, o.timings) for r, o in results]
        assert not any(isinstance(outcome, Exception) for outcome in generate(refiner, jobs))
        return time.perf_counter() - started

    base_alone = best_of(repeats, lambda: drain(engine.running_batch(), plain))
    with_refiner = best_of(repeats, ensemble)
    return [
        {"run": "base, all steps", "seconds": base_alone, "vs_base": 1.0},
        {"run": "base to 0.8 + refiner", "seconds": with_refiner, "vs_base": with_refiner / base_alone},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (the median is kept)")
    args = parser.parse_args()
    work = {"prompt": "a lighthouse at dawn", "height": args.size, "width": args.size}
    work["num_inference_steps"] = args.steps
    sources = {"ink": "tiny:sdxl-lora", "paper": "tiny:sdxl-lora-2"}
    engine = SDXLEngine(str(tiny_model("sdxl")), threads=MODEL_CPUS, loras=sources)
    refiner = SDXLRefinerEngine(str(tiny_model("sdxl-refiner")), threads=MODEL_CPUS)
    adapters = adapter_rows(engine, work, args.repeats)
    print_table(f"{REQUESTS} requests in one step batch, by LoRA adapter sets", adapters)
    images = img2img_rows(engine, work, args.repeats)
    print_table(f"{REQUESTS} requests: text2img and img2img by strength", images)
    refined = refiner_rows(engine, refiner, work, args.repeats)
    print_table(f"{REQUESTS} requests: the refiner hand-off (in-process: no transport)", refined)
    hand_off_bytes = 4 * 128 * 128 * 2  # one 1024² image's latents in float16
    print(f"\na hand-off carries {hand_off_bytes // 1024} KiB per 1024² image (float16 latents)")
    results = {
        "work": work,
        "requests": REQUESTS,
        "adapters": adapters,
        "img2img": images,
        "refiner": refined,
    }
    write_results("workflows", {**results, "hand_off_bytes_per_1024_image": hand_off_bytes})


if __name__ == "__main__":
    main()
