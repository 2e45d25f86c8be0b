"""How closely a served image equals its solo diffusers call, per scheduler: served alone in the step
batch, and sharing every UNet call with requests of other schedulers and steps that join mid-way;
beside it, how much diffusers' own image 0 moves between a batch of 1 and a batch of 4 (the rounding
of batched arithmetic, which no server can do better than). Max |difference| over pixels in [0, 1].

    python -m benchmarks.batch_tolerance [--steps 20] [--size 128]
"""

import argparse
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline

from benchmarks.common import MODEL_CPUS, print_table, write_results
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.contract import Outcome
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_pipelines import SCHEDULER_CLASSES
from leap_ray.model_sources import tiny_model

SCHEDULERS = (None, *SCHEDULER_CLASSES)  # None: the model's own (Euler for SDXL)


def diffusers_images(reference: Any, request: SDXLRequest, images: int) -> np.ndarray:
    """diffusers' own call: `images` images from seeds seed, seed + 1, ..."""
    pipeline = reference
    if request.scheduler is not None:
        scheduler = SCHEDULER_CLASSES[request.scheduler].from_config(reference.scheduler.config)
        pipeline = StableDiffusionXLPipeline.from_pipe(reference, scheduler=scheduler)
        pipeline.set_progress_bar_config(disable=True)
    kwargs = request.to_pipeline_kwargs() | {"num_images_per_prompt": images, "output_type": "np"}
    generators = [torch.Generator().manual_seed(request.seed + j) for j in range(images)]
    return pipeline(**kwargs, generator=generators).images


def served(engine: SDXLEngine, request: SDXLRequest, company: list[SDXLRequest]) -> np.ndarray:
    """The request's image from a step batch where `company` joins, one request a step."""
    batch, finished = engine.running_batch(8), {}
    assert batch.admit(request) is None
    step = 0
    while batch.load:
        if step < len(company):
            assert batch.admit(company[step]) is None
        outcomes: list[Outcome] = batch.step()
        finished.update((id(submitted), outcome) for submitted, outcome in outcomes)
        step += 1
    return np.stack(finished[id(request)].images)


def tolerance_rows(folder: str, steps: int, size: int) -> list[dict[str, Any]]:
    engine = SDXLEngine(folder, threads=MODEL_CPUS)
    reference = StableDiffusionXLPipeline.from_pretrained(folder)
    reference.set_progress_bar_config(disable=True)
    shape = {"height": size, "width": size}
    rows = []
    for index, scheduler in enumerate(SCHEDULERS):
        request = SDXLRequest(
            prompt="a lighthouse", seed=7, num_inference_steps=steps, scheduler=scheduler, **shape
        )
        company = [  # other schedulers and steps, all sharing the request's UNet calls
            SDXLRequest(
                prompt=f"mate {j}",
                seed=100 + j,
                num_inference_steps=max(2, steps - j),
                scheduler=other,
                **shape,
            )
            for j, other in enumerate(SCHEDULERS[index + 1 :] + SCHEDULERS[:index], start=1)
        ]
        solo = diffusers_images(reference, request, 1)
        rows.append(
            {
                "scheduler": scheduler or "model's own",
                "served_alone": float(np.abs(served(engine, request, []) - solo).max()),
                "served_sharing": float(np.abs(served(engine, request, company) - solo).max()),
                "diffusers_batch_4": float(np.abs(diffusers_images(reference, request, 4)[:1] - solo).max()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(MODEL_CPUS)
    rows = tolerance_rows(str(tiny_model("sdxl")), args.steps, args.size)
    print_table(
        f"Max |served - diffusers solo| per scheduler ({args.size}², {args.steps} steps, CPU float32)", rows
    )
    write_results("batch_tolerance", {"steps": args.steps, "size": args.size, "rows": rows})


if __name__ == "__main__":
    main()
