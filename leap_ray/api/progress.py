"""Progress events: what an engine reports while a request runs, and what clients receive as SSE
`progress` events, job progress and progress webhooks."""

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StepProgress:
    """SDXL: a denoising step of the request is done."""

    step: int
    total: int
    timestep: float
    preview: str | None = None  # base64 PNG of the first image's latents, every preview_every steps
    stage: str | None = None  # with a refiner: "base" or "refiner", each stage counting its own steps


@dataclass(frozen=True)
class AudioProgress:
    """MusicGen: another whole second of the track is generated."""

    seconds: float
    total: float


Progress = StepProgress | AudioProgress


def progress_json(progress: Progress) -> dict[str, Any]:
    """The event as clients see it (no `preview` key when there is none)."""
    return {name: value for name, value in asdict(progress).items() if value is not None}
