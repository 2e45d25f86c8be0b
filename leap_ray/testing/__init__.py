"""Tiny random-weight models with the real models' layouts, built offline in seconds, for tests and
for running the service on a laptop. `leap-ray tiny-models DIR` writes them."""

from pathlib import Path

from leap_ray.testing.tiny_sdxl import write_tiny_sdxl

TINY_MODEL_NAMES = ("sdxl",)


def write_tiny_models(directory: Path) -> dict[str, Path]:
    """Writes every tiny model under `directory` (one folder each) and returns the folders."""
    directory = Path(directory)
    return {"sdxl": write_tiny_sdxl(directory / "sdxl")}


def ensure_tiny_models(directory: Path) -> dict[str, Path]:
    """The tiny models under `directory`, built on first use."""
    directory = Path(directory)
    folders = {name: directory / name for name in TINY_MODEL_NAMES}
    if all(
        (folder / "model_index.json").exists() or (folder / "config.json").exists()
        for folder in folders.values()
    ):
        return folders
    return write_tiny_models(directory)
