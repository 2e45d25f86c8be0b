"""Progress events: what an engine reports while a request runs, and what clients receive as SSE
`progress` events, job progress and progress webhooks."""

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StepProgress:
    """SDXL: a denoising step of the request is done."""

    step: int
    """Steps done, from 1 (with a refiner, of this stage)."""
    total: int
    """Steps the request takes (with a refiner, this stage)."""
    timestep: float
    """The scheduler's timestep of the step just done."""
    preview: str | None = None
    """Base64 PNG of the first image's latents, every preview_every steps (a job's progress has none)."""
    stage: str | None = None
    """With a refiner: "base" or "refiner", each stage counting its own steps; absent without one."""


@dataclass(frozen=True)
class AudioProgress:
    """MusicGen: another whole second of the track is generated."""

    seconds: float
    """Seconds of the track generated so far."""
    total: float
    """The track's length in seconds (the request's duration)."""


Progress = StepProgress | AudioProgress


def progress_json(progress: Progress) -> dict[str, Any]:
    """The event as clients see it (no `preview` key when there is none)."""
    return {name: value for name, value in asdict(progress).items() if value is not None}
