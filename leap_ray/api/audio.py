"""Audio on the wire: a melody arrives as base64 or a `data:` URI holding WAV, FLAC, OGG or MP3 (or,
through a handle, as an array with its sample rate); results leave as encoded bytes."""

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soundfile
import torch

AudioFormat = Literal["wav", "flac", "ogg", "mp3"]
AUDIO_FORMATS: dict[str, tuple[str, str, str]] = {
    # format: (libsndfile container, subtype, content type)
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1] at their own sample rate."""

    waveform: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


def _base64_payload(text: str) -> bytes:
    if text.startswith("data:"):
        header, separator, text = text.partition(",")
        if not separator or not header.endswith(";base64"):
            raise ValueError("a data: URI must be base64-encoded (data:audio/...;base64,...)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


def decode_audio(value: object, *, max_bytes: int, max_seconds: float) -> DecodedAudio:
    """Decodes base64 / data-URI audio, raw bytes, a DecodedAudio, or an (array, sample_rate) pair,
    mixed down to mono. Raises ValueError saying what is wrong."""
    if isinstance(value, DecodedAudio):
        audio = value
    elif isinstance(value, tuple) and len(value) == 2:
        samples, sample_rate = value
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 2:  # (channels, samples), torch's layout
            samples = samples.mean(axis=0)
        if samples.ndim != 1 or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError("must be (samples or (channels, samples), sample_rate as a positive int)")
        audio = DecodedAudio(samples, sample_rate)
    elif isinstance(value, str | bytes):
        if len(value) > max_bytes * 4 // 3 + 1024:
            raise ValueError(f"is larger than the limit of {max_bytes} bytes")
        raw = _base64_payload(value) if isinstance(value, str) else value
        if len(raw) > max_bytes:
            raise ValueError(f"is larger than the limit of {max_bytes} bytes")
        try:
            samples, sample_rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            raise ValueError("is not audio in a format we read (wav, flac, ogg, mp3)") from None
        audio = DecodedAudio(samples.mean(axis=1), int(sample_rate))
    else:
        raise ValueError("must be base64 audio, a data: URI, or (samples, sample_rate)")
    if audio.waveform.size == 0:
        raise ValueError("holds no audio samples")
    if not np.isfinite(audio.waveform).all():
        raise ValueError("holds NaN or infinite samples")
    if audio.seconds > max_seconds:
        raise ValueError(f"is {audio.seconds:.1f} s long; the limit is {max_seconds:g} s")
    return audio


def encode_audio(waveform: np.ndarray, sample_rate: int, audio_format: str) -> bytes:
    container, subtype, _ = AUDIO_FORMATS[audio_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(waveform, -1.0, 1.0), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def content_type(audio_format: str) -> str:
    return AUDIO_FORMATS[audio_format][2]
