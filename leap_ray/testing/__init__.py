"""Tiny random-weight models with the real models' layouts, built offline in seconds, for tests and
for running the service on a laptop. `leap-ray tiny-models DIR` writes them."""

import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from leap_ray.testing.tiny_musicgen import write_tiny_musicgen, write_tiny_musicgen_melody
from leap_ray.testing.tiny_sdxl import write_tiny_sdxl

WRITERS: dict[str, Callable[[Path], Path]] = {
    "sdxl": write_tiny_sdxl,
    "musicgen": write_tiny_musicgen,
    "musicgen-melody": write_tiny_musicgen_melody,
}


def write_tiny_models(directory: Path) -> dict[str, Path]:
    """Writes every tiny model under `directory` (one folder each) and returns the folders."""
    return {name: write(Path(directory) / name) for name, write in WRITERS.items()}


TINY_PREFIX = "tiny:"


def tiny_models_cache() -> Path:
    default = Path.home() / ".cache" / "leap_ray" / "tiny-models"
    return Path(os.environ.get("LEAP_RAY_TINY_MODELS", default))


def tiny_model(name: str, cache: Path | None = None) -> Path:
    """The folder of tiny model `name`, built once per machine on first use. Replicas starting
    together may ask at once: the build runs under a file lock and appears by an atomic rename."""
    if name not in WRITERS:
        raise ValueError(f"no tiny model {name!r}; there are {sorted(WRITERS)}")
    cache = Path(cache or tiny_models_cache())
    folder = cache / name
    if folder.exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-"))
            WRITERS[name](staging)
            staging.rename(folder)
    return folder


def resolve_model(source: str) -> str:
    """A model id or folder as given, or the folder of a `tiny:<name>` model."""
    if source.startswith(TINY_PREFIX):
        return str(tiny_model(source.removeprefix(TINY_PREFIX)))
    return source
