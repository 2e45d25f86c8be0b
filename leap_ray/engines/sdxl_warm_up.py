"""How a compiled SDXL engine (the base or the refiner) warms up, so that no request pays for a compile
and a replica reports healthy as soon as it can serve:

1. The compile cache (leap_ray.engines.compile_cache) is loaded, when there is one for this setup.
2. The smallest bucket is compiled at every warm-up size, with real requests in a step batch (which
   also compiles the VAE decoder at each size). The engine's constructor returns: the replica is ready.
3. The other buckets compile on a thread of their own, from one row of each input shape the first
   bucket ran (`UNetRunner.compile_bucket`); each becomes usable as it is done.
4. Then what was compiled is saved to the compile cache, for the replicas of other nodes.

Why this is safe: the UNet and VAE are only read by forward passes (as in sdxl_own_lane, two threads
may run them), a bucket is used only once compiled, and a step batch bigger than the compiled
buckets runs as several calls, which cannot change a row's result. With CUDA graphs (mode
reduce-overhead or max-autotune), whose trees are per thread, every bucket compiles before the replica
is ready."""

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Callable
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
        "leap_ray": importlib.metadata.version("leap_ray"),
        "torch": torch.__version__,
        "triton": triton,
        "python": platform.python_version(),
        "device": device_name(engine.device),
        "dtype": str(engine.dtype),
        "unet": dict(engine.pipeline.unet.config),
        "vae": dict(engine.pipeline.vae.config),
        "options": {
            "compile": speed.compile,
            "regional_compile": speed.regional_compile,
            "batch_buckets": list(speed.batch_buckets),
            "channels_last": speed.channels_last,
            "fuse_qkv": speed.fuse_qkv,
            "warm_up_sizes": [list(size) for size in speed.warm_up_sizes],
        },
    }


def run_all(batch: RunningBatch, requests: list[Any]) -> None:
    for outcome in run_to_end(batch, requests):
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
    cache = CompileCache(speed.compile_cache, name, cache_key(engine)) if speed.compile_cache else None
    if cache is not None:
        cache.load()
    in_background = unet.row_buckets and speed.compile_kwargs.get("mode") not in CUDA_GRAPH_MODES
    first = unet.usable[:1] if in_background else unet.usable
    unet.usable = first
    for height, width in speed.warm_up_sizes:
        for rows in first or [2]:
            run_all(engine.running_batch(), requests(height, width, rows // 2))
    rest = [rows for rows in unet.row_buckets if rows not in first]
    if not rest:
        if cache is not None:
            cache.save()
        return Compiling(None, cache)
    thread = threading.Thread(target=compile_rest, args=(unet, rest, cache), name="compile-buckets")
    thread.daemon = True  # a replica that stops does not wait for its compiles
    thread.start()
    return Compiling(thread, cache)


def compile_rest(unet: UNetRunner, buckets: list[int], cache: CompileCache | None) -> None:
    """Steps 3 and 4. A bucket that fails to compile stays unused (logged): its calls run as several
    calls of the compiled ones."""
    for rows in buckets:
        try:
            with torch.inference_mode():  # the grad mode the step batch calls the UNet in: same guards
                unet.compile_bucket(rows)
        except Exception:
            logger.exception("compiling the UNet at %d rows failed; batches use the buckets compiled", rows)
            return
        logger.info("the UNet is compiled at %d rows", rows)
    if cache is not None:
        cache.save()
