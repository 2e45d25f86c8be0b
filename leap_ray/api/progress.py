"""Progress events: what an engine reports while a request runs, and what clients receive as SSE
`progress` events, job progress and progress webhooks."""

import base64
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


@dataclass(frozen=True)
class AudioDelta:
    """MusicGen with `stream: true`: the next piece of the track's audio, sent as it is generated (the
    complete track still comes at the end). The pieces, joined in order, are the whole track to within
    the tolerance the engine states (leap_ray.engines.musicgen_stream)."""

    audio: str
    """Base64 of 16-bit little-endian mono PCM: the samples that follow the previous piece's."""
    sample_rate: int
    """Samples per second of `audio`."""
    start: float
    """Seconds into the track where this piece starts."""

    @property
    def pcm(self) -> bytes:
        """The piece's samples: 16-bit little-endian mono PCM."""
        return base64.b64decode(self.audio)


Progress = StepProgress | AudioProgress | AudioDelta
JobProgress = StepProgress | AudioProgress  # what a job keeps and reports: never audio
AUDIO_DELTA_FORMAT = "pcm16"  # what an `audio.delta` event's audio holds


def progress_json(progress: Progress) -> dict[str, Any]:
    """The event as clients see it (no `preview` key when there is none)."""
    return {name: value for name, value in asdict(progress).items() if value is not None}


def audio_delta_json(delta: AudioDelta) -> dict[str, Any]:
    """An `audio.delta` event's data: the piece, its format (pcm16), its rate and its start."""
    return {"format": AUDIO_DELTA_FORMAT, **asdict(delta)}
