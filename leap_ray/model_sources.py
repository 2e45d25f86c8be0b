"""Where a model comes from: a hub id or a local folder as given, or `tiny:<name>` for one of the
tiny random-weight models, built offline in seconds on first use and cached (for running the service
on a laptop and for tests)."""

import fcntl
import functools
import hashlib
import importlib
import os
import re
import tempfile
from pathlib import Path

TINY_PREFIX = "tiny:"
# name: (module, function) writing that tiny model into a folder; imported only when that one is built.
TINY_BUILDERS = {
    "sdxl": ("leap_ray.tiny.sdxl", "write_tiny_sdxl"),
    "sdxl-refiner": ("leap_ray.tiny.sdxl_refiner", "write_tiny_sdxl_refiner"),
    "sdxl-lora": ("leap_ray.tiny.sdxl_lora", "write_tiny_sdxl_lora"),
    "sdxl-lora-2": ("leap_ray.tiny.sdxl_lora", "write_tiny_sdxl_lora_2"),
    "musicgen": ("leap_ray.tiny.musicgen", "write_tiny_musicgen"),
    "musicgen-melody": ("leap_ray.tiny.musicgen", "write_tiny_musicgen_melody"),
}


def tiny_models_cache() -> Path:
    default = Path.home() / ".cache" / "leap_ray" / "tiny-models"
    return Path(os.environ.get("LEAP_RAY_TINY_MODELS", default))


def write_tiny(name: str, folder: Path) -> Path:
    """Writes tiny model `name` into `folder`."""
    module, function = TINY_BUILDERS[name]
    return getattr(importlib.import_module(module), function)(folder)


@functools.cache
def tiny_builders_digest() -> str:
    """A digest of the tiny builders' source (leap_ray/tiny/): the cache keeps each build under it, so
    a machine that built the tiny models before a builder changed builds them again instead of serving
    the old ones (their native size, say, which the playground's defaults come from)."""
    sources = sorted((Path(__file__).parent / "tiny").glob("*.py"))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


def tiny_model(name: str, cache: Path | None = None) -> Path:
    """The folder of tiny model `name`, built once per machine (and per version of its builders) on
    first use. Replicas starting together may ask at once: the build runs under a file lock and
    appears by an atomic rename."""
    if name not in TINY_BUILDERS:
        raise ValueError(f"no tiny model {name!r}; there are {sorted(TINY_BUILDERS)}")
    cache = Path(cache or tiny_models_cache()) / tiny_builders_digest()
    folder = cache / name
    if folder.exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-"))
            write_tiny(name, staging)
            staging.rename(folder)
    return folder


def resolve_model(source: str) -> str:
    """A model id or folder as given, or the folder of a `tiny:<name>` model."""
    if source.startswith(TINY_PREFIX):
        return str(tiny_model(source.removeprefix(TINY_PREFIX)))
    return source


def display_name(source: str) -> str:
    """What outputs say made them, for a model source: a `tiny:` name or a hub id as given, a local
    folder's last part only (its path, which may say where the operator keeps private models, stays
    on the machine)."""
    if not source or source.startswith(TINY_PREFIX):
        return source
    path = Path(source).expanduser()
    looks_like_hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source) is not None
    if looks_like_hub_id and not path.exists():
        return source
    return path.resolve().name or "model"
