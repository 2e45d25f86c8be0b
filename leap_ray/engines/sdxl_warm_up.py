"""How a compiled SDXL engine (the base or the refiner) warms up, so that no request pays for a compile
and a replica reports healthy as soon as it can serve:

1. The compile cache (leap_ray.engines.compile_cache) is loaded, when there is one for this setup.
2. The smallest bucket is compiled at every warm-up size, with real requests in a step batch (which
   also compiles the VAE decoder at each size), and saved to the compile cache: a replica scaled
   down before its other buckets compile still leaves what a new node needs to be ready. The
   engine's constructor returns: the replica is ready.
3. The other buckets compile on a thread of their own, from one row of each input shape the warm-up
   ran (`UNetRunner.compile_bucket`; requests' shapes are not added: a hostile size would be compiled,
   and run, at every bucket); each becomes usable as it is done. One that fails is logged and stays
   unused, and the others still compile.
4. Then everything compiled is saved to the compile cache again, for the replicas of other nodes (one
   that loaded only the first bucket compiles the rest, and so saves a whole archive).

Why this is safe: the UNet and VAE are only read by forward passes (as in sdxl_own_lane, two threads
may run them), a bucket is used only once compiled, and a step batch bigger than the compiled
buckets runs as several calls, which cannot change a row's result. The background compile shares
the device and the interpreter with serving: requests are slower meanwhile, but none waits for a
compile of its own.

With CUDA graphs (mode reduce-overhead or max-autotune, or inductor's `triton.cudagraphs`), every
bucket compiles before the replica is ready: CUDA graph trees are per thread, so graphs a background
thread recorded would be held for nothing. Serving runs on the step scheduler's thread, so there each
shape's graph is recorded again at its first use: a recording (one warm-up run, then the capture),
not a compile."""

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from leap_ray.engines.compile_cache import CompileCache
from leap_ray.engines.contract import RunningBatch, run_to_end
from leap_ray.engines.sdxl_fast import SDXLSpeed, UNetRunner

logger = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
WarmUpRequests = Callable[[int, int, int], list[Any]]  # (height, width, images) -> requests


class Compiled(Protocol):
    """What a warm-up needs of an engine."""

    pipeline: Any
    device: torch.device
    dtype: torch.dtype
    speed: SDXLSpeed
    unet: UNetRunner

    def running_batch(self, max_load: int = 8) -> RunningBatch: ...


def device_name(device: torch.device) -> str:
    """What compiled kernels depend on: the GPU and its capability, or the CPU's vector ISA."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"
    return f"cpu {torch.backends.cpu.get_cpu_capability()}"


def cache_key(engine: Compiled) -> dict[str, Any]:
    """Everything the compiled code depends on. The model counts by its architecture (its UNet's and
    VAE's configs), not its id or folder: the graphs take the weights as inputs."""
    speed = engine.speed
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {
        "torch": torch.__version__,
        "diffusers": importlib.metadata.version("diffusers"),
        "triton": triton,
        "python": platform.python_version(),
        "device": device_name(engine.device),
        "dtype": str(engine.dtype),
        "unet": architecture(engine.pipeline.unet.config),
        "vae": architecture(engine.pipeline.vae.config),
        "options": {
            "compile": speed.compile,
            "regional_compile": speed.regional_compile,
            "batch_buckets": sorted(set(speed.batch_buckets)),
            "channels_last": speed.channels_last,
            "fuse_qkv": speed.fuse_qkv,
            "warm_up_sizes": [list(size) for size in speed.warm_up_sizes],
        },
    }


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without diffusers' own entries (`_name_or_path`: the folder it came from,
    `_diffusers_version`: the one that saved it)."""
    return {name: value for name, value in config.items() if not name.startswith("_")}


def uses_cuda_graphs(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("mode") in CUDA_GRAPH_MODES or bool(kwargs.get("options", {}).get("triton.cudagraphs"))


def run_all(batch: RunningBatch, requests: list[Any]) -> None:
    """Runs the requests to their end in the batch, then closes it; raises the first one's error."""
    try:
        outcomes = run_to_end(batch, requests)
    finally:
        batch.close()
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome


@dataclass
class Compiling:
    """A replica's compile after it is ready: the thread compiling its other buckets (None when none
    was left) and its compile cache (None when it has none)."""

    thread: threading.Thread | None
    cache: CompileCache | None

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def warm_up(engine: Compiled, name: str, requests: WarmUpRequests) -> Compiling | None:
    """Steps 1 and 2 here, 3 and 4 on the thread of what is returned (None when nothing compiles)."""
    speed, unet = engine.speed, engine.unet
    if speed.compile_kwargs is None:
        return None
    cache = open_cache(engine, name)
    in_background = unet.row_buckets and not uses_cuda_graphs(speed.compile_kwargs)
    first = unet.usable[:1] if in_background else unet.usable
    unet.usable, unet.shapes_seen = first, {}
    for height, width in speed.warm_up_sizes:
        for rows in first or [2]:
            run_all(engine.running_batch(), requests(height, width, rows // 2))
    shapes, unet.shapes_seen = list(unet.shapes_seen.values()), None
    if cache is not None:
        cache.save()
    rest = [rows for rows in unet.row_buckets if rows not in first]
    if not rest:
        return Compiling(None, cache)
    thread = threading.Thread(target=compile_rest, args=(unet, rest, shapes, cache), name="compile-buckets")
    thread.daemon = True  # a replica that stops does not wait for its compiles
    thread.start()
    return Compiling(thread, cache)


def open_cache(engine: Compiled, name: str) -> CompileCache | None:
    """Step 1: the engine's compile cache, loaded when there is an archive for its setup."""
    location = engine.speed.cache_location
    if location is None:
        return None
    try:
        cache = CompileCache(location, name, cache_key(engine))
    except TypeError as error:  # e.g. a compile backend given as an object
        logger.warning("no compile cache: the compile options are not plain data (%s)", error)
        return None
    cache.load()
    return cache


def compile_rest(
    unet: UNetRunner, buckets: list[int], shapes: list[list[torch.Tensor]], cache: CompileCache | None
) -> None:
    """Steps 3 and 4. A bucket that fails to compile stays unused (logged): its calls run as several
    calls of the compiled ones."""
    for rows in buckets:
        try:
            with torch.inference_mode():  # the grad mode the step batch calls the UNet in: same guards
                unet.compile_bucket(rows, shapes)
        except Exception:
            logger.exception("compiling the UNet at %d rows failed; batches use the buckets compiled", rows)
            continue
        logger.info("the UNet is compiled at %d rows", rows)
    if cache is not None:
        cache.save()
