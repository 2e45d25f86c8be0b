"""Engine results as the model deployments' outputs: images and audio encoded in the request's
format (PNG, JPEG, WebP; WAV, FLAC, OGG, MP3), run off the event loop by the model shim."""

import numpy as np

from leap_ray.api.audio import encode_audio
from leap_ray.api.images import encode_image
from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest
from leap_ray.engines.results import MusicGenResult, SDXLResult


def encode_images(request: SDXLRequest, result: SDXLResult) -> SDXLOutput:
    """An SDXL engine's result (base or refiner) as the deployment's output."""
    return SDXLOutput(
        images=[encode_image(pixels, request.output_format) for pixels in result.images],
        format=request.output_format,
        seeds=result.seeds,
        timings=result.timings,
        batch_size=result.batch_size,
    )


def encode_track(request: MusicGenRequest, result: MusicGenResult) -> MusicGenOutput:
    """A MusicGen engine's result as the deployment's output."""
    waveform: np.ndarray = result.waveform
    return MusicGenOutput(
        audio=encode_audio(waveform, result.sample_rate, request.format),
        format=request.format,
        sample_rate=result.sample_rate,
        duration=len(waveform) / result.sample_rate,
        seed=result.seed,
        timings=result.timings,
        batch_size=result.batch_size,
    )
