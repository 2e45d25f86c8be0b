"""Tiny random-weight models with the real models' layouts, built offline in seconds, for tests and
for running the service on a laptop (`tiny:<name>` model sources; `leap-ray tiny-models DIR`)."""

from pathlib import Path

from leap_ray.model_sources import TINY_BUILDERS, write_tiny


def write_tiny_models(directory: Path) -> dict[str, Path]:
    """Writes every tiny model under `directory` (one folder each) and returns the folders."""
    return {name: write_tiny(name, Path(directory) / name) for name in TINY_BUILDERS}
