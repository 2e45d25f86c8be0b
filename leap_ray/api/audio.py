"""Audio on the wire: a melody arrives as base64 or a `data:` URI holding WAV, FLAC, OGG or MP3 (or,
through a handle, as an array with its sample rate); results leave as encoded bytes.

Encoded audio is a client's bytes parsed by libsndfile, so its header (sample rate, channels, length)
is checked before anything is decoded, and no more than the allowed duration is ever decoded."""

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import soundfile
import torch

from leap_ray.api.audio_tags import libsndfile_tags, with_id3_tags
from leap_ray.api.marks import OutputMarks
from leap_ray.api.progress import AudioDelta
from leap_ray.api.uploads import upload_bytes

AUDIO_FORMATS: dict[str, tuple[str, str, str]] = {
    # format: (libsndfile container, subtype, content type)
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "ogg": ("OGG", "VORBIS", "audio/ogg"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
}
# libsndfile's frame count for a stream whose header does not say how long it is.
_UNKNOWN_LENGTH = 2**63 - 1
_UNREADABLE = "is not audio in a format we read (wav, flac, ogg, mp3)"


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1] at their own sample rate."""

    waveform: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.waveform) / self.sample_rate


@dataclass(frozen=True)
class AudioLimits:
    """What decode_audio accepts. The sample rate is bounded because the model replica resamples the
    audio, at a cost that grows with the rate (2^31-1 Hz would not fit in memory)."""

    max_bytes: int
    max_seconds: float
    min_sample_rate: int
    max_sample_rate: int
    max_channels: int


def decode_audio(value: object, limits: AudioLimits) -> DecodedAudio:
    """Decodes base64 / data-URI audio, raw bytes, a DecodedAudio, or an (array, sample_rate) pair,
    mixed down to mono. Raises ValueError saying what is wrong."""
    if isinstance(value, DecodedAudio):
        audio = value
    elif isinstance(value, tuple) and len(value) == 2:
        audio = _from_array(*value, limits)
    elif isinstance(value, str | bytes):
        audio = _from_encoded(upload_bytes(value, limits.max_bytes, "audio"), limits)
    else:
        raise ValueError("must be base64 audio, a data: URI, or (samples, sample_rate)")
    _check_decoded(audio, limits)
    return audio


def _check_decoded(audio: DecodedAudio, limits: AudioLimits) -> None:
    if np.ndim(audio.waveform) != 1:
        raise ValueError("must be mono: one dimension of samples")
    _check_format(audio.sample_rate, 1, limits)
    if audio.waveform.size == 0:
        raise ValueError("holds no audio samples")
    if not np.isfinite(audio.waveform).all():
        raise ValueError("holds NaN or infinite samples")
    _check_length(len(audio.waveform), audio.sample_rate, limits.max_seconds)


def _check_format(sample_rate: object, channels: int, limits: AudioLimits) -> None:
    low, high = limits.min_sample_rate, limits.max_sample_rate
    if not isinstance(sample_rate, int | np.integer) or not low <= sample_rate <= high:
        raise ValueError(
            f"has a sample rate of {sample_rate} Hz; it must be a whole number from {low} to {high} Hz"
        )
    if not 1 <= channels <= limits.max_channels:
        raise ValueError(f"has {channels} channels; the limit is {limits.max_channels}")


def _check_length(frames: int, sample_rate: int, max_seconds: float, *, at_least: bool = False) -> None:
    if frames / sample_rate > max_seconds:
        length = f"{'at least ' if at_least else ''}{frames / sample_rate:.1f} s"
        raise ValueError(f"is {length} long; the limit is {max_seconds:g} s")


def _from_array(samples: object, sample_rate: object, limits: AudioLimits) -> DecodedAudio:
    """The handle form: (samples) or (channels, samples), torch's layout, with an int sample rate."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError("must be (samples or (channels, samples), sample_rate as a positive int)")
    # Checked on the shape, before a float32 copy of an array that may be far too big.
    _check_format(sample_rate, 1 if samples.ndim == 1 else samples.shape[0], limits)
    _check_length(samples.shape[-1], sample_rate, limits.max_seconds)
    try:
        samples = samples.astype(np.float32, copy=False)
    except (TypeError, ValueError):  # e.g. None or strings among the samples
        raise ValueError("holds samples that are not numbers") from None
    return DecodedAudio(samples.mean(axis=0) if samples.ndim == 2 else samples, sample_rate)


@contextmanager
def _unreadable_on_failure() -> Iterator[None]:
    """libsndfile parses bytes a client chose: whatever it, soundfile or numpy raise on them
    (LibsndfileError, RuntimeError, MemoryError, OverflowError, ...) means the audio is unreadable,
    a 422 naming the field, never a 500."""
    try:
        yield
    except Exception:
        raise ValueError(_UNREADABLE) from None


def _from_encoded(raw: bytes, limits: AudioLimits) -> DecodedAudio:
    """Checks the header, then decodes at most the allowed duration."""
    with _unreadable_on_failure():
        file = soundfile.SoundFile(io.BytesIO(raw))
    with file:
        _check_format(file.samplerate, file.channels, limits)
        if file.frames != _UNKNOWN_LENGTH:
            _check_length(file.frames, file.samplerate, limits.max_seconds)
        return DecodedAudio(_read_mono(file, limits.max_seconds), file.samplerate)


def _read_mono(file: soundfile.SoundFile, max_seconds: float) -> np.ndarray:
    """Reads one-second blocks, mixing each to mono as it comes, so memory stays that of the allowed
    duration in mono whatever the channel count; stops once past the limit, since a header may
    understate the length or not know it."""
    block = np.empty((file.samplerate, file.channels), dtype=np.float32)
    mono: list[np.ndarray] = []
    frames = 0
    while True:
        with _unreadable_on_failure():
            samples = file.read(out=block)
        if len(samples) == 0:
            return np.concatenate(mono) if mono else np.zeros(0, dtype=np.float32)
        mono.append(samples.mean(axis=1))
        frames += len(samples)
        _check_length(frames, file.samplerate, max_seconds, at_least=True)


def encode_audio(
    waveform: np.ndarray, sample_rate: int, audio_format: str, marks: OutputMarks | None = None
) -> bytes:
    """Mono samples in [-1, 1] -> encoded bytes, tagged with the track's `marks` when given: title (the
    prompt), comment (its request as JSON) and software (`leap_ray.api.audio_tags`: libsndfile's tags
    for a WAV's LIST INFO chunk and FLAC's and OGG's Vorbis comments, set before the first sample as
    FLAC and OGG need, each within what the container keeps; an MP3's ID3 tag written by mutagen)."""
    container, subtype, _ = AUDIO_FORMATS[audio_format]
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", sample_rate, 1, subtype=subtype, format=container) as file:
        if marks is not None and audio_format != "mp3":
            for name, text in libsndfile_tags(marks, audio_format).items():
                setattr(file, name, text)
        file.write(np.clip(waveform, -1.0, 1.0))
    if marks is not None and audio_format == "mp3":
        return with_id3_tags(buffer.getvalue(), marks)
    return buffer.getvalue()


def pcm16(waveform: np.ndarray, sample_rate: int) -> bytes:
    """Headerless 16-bit little-endian mono PCM of the samples, converted by libsndfile as a wav
    output's are: a streamed piece holds the very numbers the final track's WAV holds."""
    buffer = io.BytesIO()
    clipped = np.clip(waveform, -1.0, 1.0)
    soundfile.write(buffer, clipped, sample_rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buffer.getvalue()


def audio_delta(samples: np.ndarray, sample_rate: int, start: int) -> AudioDelta:
    """The event that streams `samples`, the piece of a track from its sample `start` on."""
    audio = base64.b64encode(pcm16(samples, sample_rate)).decode()
    return AudioDelta(audio=audio, sample_rate=sample_rate, start=start / sample_rate)


def content_type(audio_format: str) -> str:
    return AUDIO_FORMATS[audio_format][2]
