"""How long a compiled SDXL replica takes to start: each start is a fresh process with an empty
inductor cache (a new node), as a replica's constructor builds its engine. Side by side, in one run:

- eager: no compile (what the compile costs is counted from this);
- whole UNet and VAE compiled (before regional compilation), and regional compilation, each
  cold (empty compile cache) and on a new node (empty inductor cache, the compile cache the cold
  start saved).

    python -m benchmarks.compile_start                       # tiny model, CPU, buckets 1 2 4, 64²
    python -m benchmarks.compile_start --full-size --size 1024 --buckets 1 2 4 8   # a GPU machine

"ready" is when the engine's constructor returned (the replica reports healthy); "all buckets" when
the last bucket finished compiling in the background. Each compiled start's image is compared with
eager's (the same request and seed). Writes benchmarks/results/compile_start.json.

`python -m benchmarks.compile_start served` starts the local graph (Ray Serve) instead: eager, regional
cold, regional on a new node, each until the application is RUNNING, then one request over HTTP.
`python -m benchmarks.compile_start replica ...` is one start, printing its figures as JSON (the
tests use it)."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, print_table, write_results

MODES = {"eager": None, "whole": {"regional_compile": False}, "regional": {"regional_compile": True}}


def replica(args: argparse.Namespace) -> dict[str, Any]:
    """One replica start in this process: its times, dynamo/inductor counters, the kernels it built
    (not loaded), and its image of a fixed request (saved to --image)."""
    started = time.perf_counter()
    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from leap_ray.api.sdxl import SDXLRequest
    from leap_ray.engines.contract import run_to_end
    from leap_ray.engines.sdxl import SDXLEngine

    imported = time.perf_counter()
    options = MODES[args.mode]
    speed = {} if options is None else {"compile": True, **options, **json.loads(args.options)}
    engine = SDXLEngine(
        args.model,
        batch_buckets=args.buckets,
        warm_up_sizes=[[args.size, args.size]],
        compile_cache=args.compile_cache,
        **speed,
    )
    ready = time.perf_counter()
    if engine.compiling is not None:
        engine.compiling.join()
    compiled = time.perf_counter()
    request = SDXLRequest(
        prompt="a lighthouse", seed=7, num_inference_steps=3, height=args.size, width=args.size
    )
    (outcome,) = run_to_end(engine.running_batch(), [request])
    np.save(args.image, np.stack(outcome.images))
    cache = engine.compiling.cache if engine.compiling is not None else None
    return {
        "mode": args.mode,
        "import_s": round(imported - started, 2),
        "ready_s": round(ready - imported, 2),
        "all_buckets_s": round(compiled - imported, 2),
        "inductor": dict(counters["inductor"]),
        "aot_autograd": dict(counters["aot_autograd"]),
        "kernels_built": None if cache is None else len(cache.built_kernels()),
        "kernels_loaded": None if cache is None else len(cache.kernels_loaded),
        "cache_loaded": cache is not None and cache.loaded,
        "device": str(engine.device),
        "torch": torch.__version__,
    }


def start(
    mode: str, model: str, args: argparse.Namespace, cache: Path, image: Path, options: str = "{}"
) -> dict[str, Any]:
    """One replica start in a fresh process, with an empty inductor cache folder of its own;
    `options`: more of the engine's fast-path options (JSON)."""
    inductor = tempfile.mkdtemp(prefix="inductor-")
    command = [sys.executable, "-m", "benchmarks.compile_start", "replica", "--mode", mode, "--model", model]
    command += ["--size", str(args.size), "--compile-cache", str(cache), "--image", str(image)]
    command += ["--options", options, "--buckets", *(str(bucket) for bucket in args.buckets)]
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} start failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Every start, side by side: eager, then cold and new-node starts of each compile mode."""
    import numpy as np

    from benchmarks.common import models

    model = models(args)["sdxl"]
    work = Path(tempfile.mkdtemp(prefix="compile-start-"))
    rows, eager = [], start("eager", model, args, work / "none", work / "eager.npy")
    for mode in ("whole", "regional"):
        cache = work / f"cache-{mode}"
        for node in ("cold", "new node"):
            figures = start(mode, model, args, cache, work / f"{mode}.npy")
            pixels = np.abs(np.load(work / f"{mode}.npy") - np.load(work / "eager.npy")).max() * 255
            rows.append({"start": f"{mode}, {node}", **figures, "vs eager /255": round(float(pixels), 3)})
    for row in rows:  # what compiling adds to a start: until ready, and until every bucket compiled
        row["compile_cost_s"] = round(row["ready_s"] - eager["ready_s"], 2)
        row["all_buckets_cost_s"] = round(row["all_buckets_s"] - eager["ready_s"], 2)
        cold = next(r for r in rows if r["mode"] == row["mode"])
        row["cost ÷ cold"] = round(row["compile_cost_s"] / cold["compile_cost_s"], 3)
        row["all ÷ cold"] = round(row["all_buckets_cost_s"] / cold["all_buckets_cost_s"], 3)
    return {"eager": eager, "starts": rows}


def served(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The local graph (Ray Serve, HTTP) started with SDXL eager, compiled cold, then compiled on a new
    node (a fresh inductor cache folder for the SDXL replica, the compile cache the cold start saved):
    seconds until the application is RUNNING (Ray's start included, the same in each), and the image
    of one request over HTTP."""
    import base64
    import io

    import httpx
    import numpy as np
    from PIL import Image

    from benchmarks.common import application, graph, models

    folders, cache = models(args), tempfile.mkdtemp(prefix="compile-cache-")
    compiled = {"compile": True, "batch_buckets": args.buckets, "compile_cache": cache}
    compiled["warm_up_sizes"] = [[args.size, args.size]]
    body = {
        "prompt": "a lighthouse",
        "seed": 7,
        "num_inference_steps": 3,
        "height": args.size,
        "width": args.size,
    }
    rows: list[dict[str, Any]] = []
    images: list[Any] = []
    for label, speed in (("eager", {}), ("regional, cold", compiled), ("regional, new node", compiled)):
        app = application("starts", folders, max_batch_size=2 * max(args.buckets), batching="step")
        app["args"]["sdxl"]["engine_kwargs"] = speed
        sdxl = next(deployment for deployment in app["deployments"] if deployment["name"] == "SDXL")
        inductor = tempfile.mkdtemp(prefix="inductor-")
        sdxl["ray_actor_options"]["runtime_env"] = {"env_vars": {"TORCHINDUCTOR_CACHE_DIR": inductor}}
        began = time.perf_counter()
        with graph(app) as url:
            ready = time.perf_counter() - began
            answer = httpx.post(f"{url}/starts/v1/sdxl", json=body, timeout=600).json()
        png = base64.b64decode(answer["images"][0]["data"])
        images.append(np.asarray(Image.open(io.BytesIO(png)), dtype=float))
        rows.append({"start": label, "ready_s": round(ready, 1)})
    for row, image in zip(rows, images, strict=True):
        row["compile_cost_s"] = round(row["ready_s"] - rows[0]["ready_s"], 1)
        row["vs eager /255"] = float(np.abs(image - images[0]).max())
    for row in rows:
        row["cost ÷ cold"] = round(row["compile_cost_s"] / rows[1]["compile_cost_s"], 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", choices=["compare", "replica", "served"], default="compare")
    parser.add_argument("--mode", choices=sorted(MODES), default="regional", help="replica: its compile")
    parser.add_argument("--model", default=None, help="replica: the model folder")
    parser.add_argument("--image", default=None, help="replica: where its image is saved (.npy)")
    parser.add_argument("--compile-cache", default=None, help="replica: the compile cache location")
    parser.add_argument("--options", default="{}", help="replica: more fast-path options (JSON)")
    parser.add_argument("--buckets", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--full-size", action="store_true", help="architecture-true random-weight SDXL")
    parser.add_argument("--models", default=None, help="folder for --full-size models")
    args = parser.parse_args()
    if args.command == "replica":
        print(json.dumps(replica(args)))
        return
    if args.command == "served":
        rows = served(args)
        print_table(f"The local graph, SDXL replica start, {args.size}², buckets {args.buckets}", rows)
        print(f"results: {write_results('compile_start_served', {'machine': machine(), 'starts': rows})}")
        return
    result = {"machine": machine(), "buckets": args.buckets, "size": args.size, **compare(args)}
    columns = (
        "start",
        "ready_s",
        "all_buckets_s",
        "cost ÷ cold",
        "all ÷ cold",
        "kernels_built",
        "vs eager /255",
    )
    eager = {"start": "eager", "ready_s": result["eager"]["ready_s"]}
    table = [{name: row.get(name, "") for name in columns} for row in [eager, *result["starts"]]]
    print_table(f"SDXL replica start, {args.size}², buckets {args.buckets}", table)
    print(f"results: {write_results('compile_start', result)}")


if __name__ == "__main__":
    main()
