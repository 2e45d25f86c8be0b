"""What every benchmark shares: the workloads, the models, the graph under test, percentiles, tables
and JSON results. Each script prints a table and writes benchmarks/results/<name>.json."""

import argparse
import copy
import json
import os
import platform
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
import yaml

RESULTS = Path(__file__).parent / "results"
SDXL_WORK = {"prompt": "a lighthouse at dawn", "height": 128, "width": 128, "num_inference_steps": 10}
MUSIC_WORK = {"prompt": "lo-fi beat", "duration": 2.0}
MODEL_CPUS = 1  # CPUs (and torch threads) of one model replica, and of the direct engine it is compared to


def arguments(
    description: str, seconds: float | None = None, rates: str | None = None, null_engine: bool = False
) -> argparse.Namespace:
    """The options every benchmark takes, plus --seconds and --rates for those given a default, and
    --null-engine for those that offer it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="architecture-true random-weight SDXL base and MusicGen-melody (for a GPU machine)",
    )
    parser.add_argument("--models", default=None, help="folder for the benchmark's models (default: a cache)")
    if seconds is not None:
        parser.add_argument("--seconds", type=float, default=seconds, help="length of each timed run")
    if rates is not None:
        parser.add_argument("--rates", default=rates, help="arrival rates per second, comma-separated")
    if null_engine:
        parser.add_argument(
            "--null-engine",
            action="store_true",
            help="simulated engines that take no time: what the serving layer alone costs",
        )
    return parser.parse_args()


def models(args: argparse.Namespace) -> dict[str, str]:
    """Model folders: the tiny ones, or architecture-true random-weight ones with --full-size."""
    if args.full_size:
        from leap_ray.tiny.full_size import write_full_size_models

        return {k: str(v) for k, v in write_full_size_models(Path(args.models or "models/full-size")).items()}
    from leap_ray.model_sources import tiny_model

    return {name: str(tiny_model(name)) for name in ("sdxl", "musicgen-melody")}


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "platform": platform.platform()}


def closed_loop(url: str, body: dict, units: float, concurrency: int, seconds: float) -> tuple[float, int]:
    """Work units per second with `concurrency` clients each sending back to back; and failures."""
    deadline = time.perf_counter() + seconds
    failures = 0

    def client_loop(_: int) -> float:
        nonlocal failures
        done = 0.0
        with httpx.Client(timeout=300) as client:
            while time.perf_counter() < deadline:
                if client.post(url, json=body).status_code == 200:
                    done += units
                else:
                    failures += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(client_loop, range(concurrency)))
    return total / (time.perf_counter() - started), failures


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    columns = list(rows[0])
    cells = [[f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "time": time.time(), **data}, indent=2))
    print(f"\nwrote {path}")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def application(
    name: str,
    model_folders: dict[str, str],
    max_batch_size: int,
    batch_wait_s: float = 0.05,
    batching: str = "request",
    **sdxl_options: Any,
) -> dict:
    """The local config's application under another name, batch size, batch wait and batching mode
    (both models; `request`, whole-request batches, unless asked)."""
    from leap_ray.serve.launch import local_config_path

    (template,) = yaml.safe_load(local_config_path().read_text())["applications"]
    app = copy.deepcopy(template)
    app.update(name=name, route_prefix=f"/{name}", logging_config={"log_level": "WARNING"})
    app["args"] = {
        "sdxl": {"model": model_folders["sdxl"]},
        "musicgen": {"model": model_folders["musicgen-melody"]},
    }
    # The benchmarks measure the base and MusicGen: no refiner deployment (none in the args either).
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "Refiner"]
    # Up to four model replicas (two applications side by side) share one GPU in these benchmarks.
    gpus = 0.25 if torch.cuda.is_available() else 0
    for deployment in app["deployments"]:
        if deployment["name"] != "Ingress":
            deployment["ray_actor_options"] = {"num_cpus": MODEL_CPUS, "num_gpus": gpus}
            deployment["user_config"] = {
                "max_batch_size": max_batch_size,
                "batch_wait_timeout_s": batch_wait_s,
                "batching": batching,
            }
            deployment["max_ongoing_requests"] = max(16, 2 * max_batch_size)
        if deployment["name"] == "SDXL":
            deployment.update(sdxl_options)
    return app


@contextmanager
def graph(*applications: dict) -> Iterator[str]:
    """A local Ray with these applications deployed; yields the base URL; shuts down after."""
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from leap_ray.serve.launch import deploy, start_ray, wait_until_running

    port = _free_port()
    config = ServeDeploySchema.model_validate(
        {"http_options": {"host": "127.0.0.1", "port": port}, "applications": list(applications)}
    )
    start_ray(num_cpus=2 * MODEL_CPUS * len(applications) + 1)
    try:
        deploy(config)
        wait_until_running(config, timeout_s=600)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
