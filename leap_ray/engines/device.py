"""Where an engine runs: CUDA with half precision when present, else the CPU in float32, with torch's
thread pool kept to the CPUs this process was given (oversubscribed threads on a small box turned a
0.5 s call into 8-30 s)."""

import os

import torch


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    if requested:
        return getattr(torch, requested)
    return torch.float16 if device.type == "cuda" else torch.float32


def limit_threads(threads: int | None = None) -> int:
    """Sets torch's intra-op threads to `threads`, else to OMP_NUM_THREADS (Ray sets it to the
    replica's num_cpus), else to the CPUs this process may run on. Returns the number set."""
    if threads is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(from_env) if from_env.isdigit() and int(from_env) > 0 else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def placement(
    device: str | None = None, dtype: str | None = None, threads: int | None = None
) -> tuple[torch.device, torch.dtype]:
    """An engine's device and dtype (CUDA in half precision when present), with threads limited."""
    limit_threads(threads)
    chosen = pick_device(device)
    return chosen, pick_dtype(chosen, dtype)
