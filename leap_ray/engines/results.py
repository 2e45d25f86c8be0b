"""What the engines hand back for a finished request, free of the model libraries (diffusers,
transformers), so that the serving layer can encode it without importing them."""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SDXLResult:
    """One request's images as float arrays (height, width, 3) in [0, 1], with their seeds; or, for a
    request the refiner finishes, its latents where the base stopped and its generators' states (the
    refiner goes on with the same generators, as one process calling both pipelines would)."""

    images: list[np.ndarray]
    seeds: list[int]
    timings: dict[str, float]
    batch_size: int
    stopped_at_step: int | None = None
    latents: torch.Tensor | None = None
    generator_states: list[torch.Tensor] | None = None


@dataclass
class MusicGenResult:
    waveform: np.ndarray  # (samples,) float32, mono
    sample_rate: int
    seed: int
    timings: dict[str, float]
    batch_size: int
    stopped: bool = False
