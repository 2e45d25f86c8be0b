"""The MusicGen request: prompt, duration up to the configured maximum (60 s), output format, an
optional melody whose chroma guides the music (as musicgen-melody does), seed, and the sampling knobs
with audiocraft's defaults."""

import base64
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from leap_ray.api.audio import AudioLimits, DecodedAudio, decode_audio
from leap_ray.api.common import MAX_SEED, FiniteFloat, capped, prompt_text
from leap_ray.api.marks import OutputMarks, request_record
from leap_ray.api.responses import AudioFormat, MusicGenResponse
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest

_LIMITS = LIMITS.musicgen
MELODY_LIMITS = AudioLimits(
    max_bytes=_LIMITS.max_melody_bytes,
    max_seconds=_LIMITS.max_melody_s,
    min_sample_rate=_LIMITS.min_melody_sample_rate,
    max_sample_rate=_LIMITS.max_melody_sample_rate,
    max_channels=_LIMITS.max_melody_channels,
)


def _melody(value: object) -> DecodedAudio | None:
    if value is None:
        return None
    return decode_audio(value, MELODY_LIMITS)


MelodyInput = Annotated[
    DecodedAudio | None,
    PlainValidator(_melody),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "contentEncoding": "base64",
                    "contentMediaType": "audio/*",
                    "maxLength": _LIMITS.max_melody_bytes * 4 // 3 + 1024,
                },
                {"type": "null"},
            ],
            "description": "Base64 or a data: URI of WAV, FLAC, OGG or MP3 audio.",
        }
    ),
]


@dataclass(frozen=True)
class MusicGenModelSpec:
    """What a loaded model offers, for checks that depend on it."""

    sample_rate: int
    frame_rate: int
    supports_melody: bool


MUSICGEN_EXAMPLE = {"prompt": "lo-fi beat with warm piano", "duration": 5, "format": "wav", "seed": 7}


class MusicGenRequest(BaseModel):
    """One MusicGen generation. With a seed, the same request gives the same audio, whatever else
    shares its batch."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, json_schema_extra={"examples": [MUSICGEN_EXAMPLE]}
    )

    prompt: prompt_text(_LIMITS.max_prompt_chars) = Field(  # type: ignore[valid-type]
        description="Text describing the music."
    )
    duration: FiniteFloat = Field(
        capped(10.0, _LIMITS.max_duration_s),
        gt=0.0,
        le=_LIMITS.max_duration_s,
        description="Length of the track in seconds (at most the configured maximum, 60 s by default); "
        "rounded to whole codec frames (1/50 s).",
    )
    format: AudioFormat = Field("wav", description="wav (16-bit PCM), flac, ogg (Vorbis) or mp3.")
    melody: MelodyInput = Field(
        None,
        description="A melodic guide: audio whose chroma conditions the music, as musicgen-melody does. "
        "Mixed to mono and resampled; looped when shorter than the track. Needs a melody model.",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Sampling seed; random when absent.")
    stream: bool = Field(
        False,
        description="Answer with Server-Sent Events (as Accept: text/event-stream also asks): the track's "
        "audio as it is generated (`audio.delta`: base64 16-bit little-endian mono PCM with its "
        "sample_rate and start, about every half second), `progress` each second, then `result` with "
        "the complete track. Jobs ignore it (a job keeps no audio but its output).",
    )
    guidance_scale: FiniteFloat = Field(3.0, ge=0.0, le=20.0, description="Classifier-free guidance scale.")
    temperature: FiniteFloat = Field(
        1.0,
        ge=0.0,
        le=5.0,
        description="Softmax temperature; 0 picks the likeliest token.",
    )
    top_k: int = Field(
        250, ge=0, le=10_000, description="Sample among the k likeliest tokens; 0 turns it off."
    )
    top_p: FiniteFloat = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Nucleus sampling threshold; 0 turns it off, and when on it replaces top_k.",
    )

    def frames(self, frame_rate: int) -> int:
        return max(1, round(self.duration * frame_rate))

    def output_marks(self, seed: int, model: str) -> OutputMarks:
        """What its track says about itself (`leap_ray.api.marks`): the prompt as its title, and this
        request as JSON (with the seed it ran with; a melody summarised) as its comment."""
        record = {"model": model, "request": request_record(self, seed=seed)}
        return OutputMarks(title=self.prompt, parameters="", record=record)

    def check_against(self, spec: MusicGenModelSpec) -> None:
        """Raises InvalidRequest for what the loaded model cannot do."""
        if self.melody is not None and not spec.supports_melody:
            raise InvalidRequest(
                "this model takes no melody; serve a musicgen-melody model for melody guidance",
                param="melody",
            )


@dataclass
class MusicGenOutput:
    """What the MusicGen deployment returns: the encoded track."""

    audio: bytes
    format: str
    sample_rate: int
    duration: float
    seed: int
    timings: dict[str, float]
    batch_size: int


def musicgen_response(output: MusicGenOutput) -> MusicGenResponse:
    """The JSON answer of /v1/musicgen for a model's output."""
    fields = {name: getattr(output, name) for name in MusicGenResponse.model_fields if name != "audio"}
    return MusicGenResponse(audio=base64.b64encode(output.audio).decode(), **fields)
