"""Tiny random-weight models with the real models' layouts, built offline in seconds, for tests and
for running the service on a laptop. `leap-ray tiny-models DIR` writes them."""

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


def ensure_tiny_models(directory: Path) -> dict[str, Path]:
    """The tiny models under `directory`, each built on first use."""
    folders = {}
    for name, write in WRITERS.items():
        folder = Path(directory) / name
        folders[name] = (
            folder
            if (folder / "config.json").exists() or (folder / "model_index.json").exists()
            else write(folder)
        )
    return folders
