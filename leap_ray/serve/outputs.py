"""Engine results as the model deployments' outputs: images and audio encoded in the request's
format (PNG, JPEG, WebP; WAV, FLAC, OGG, MP3), run off the event loop by the model shim, and marked as
the operator set (`OutputMarker`): each output's own parameters in its file, and C2PA content
credentials when a signer is configured. Every entry point's outputs (the HTTP answers, jobs, the
OpenAI, Replicate and cog adapters) are these bytes."""

import numpy as np

from leap_ray.api.audio import content_type, encode_audio
from leap_ray.api.images import CONTENT_TYPES, encode_image
from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest
from leap_ray.config import OutputSettings
from leap_ray.engines.results import MusicGenResult, SDXLResult
from leap_ray.model_sources import display_name
from leap_ray.serve.credentials import ContentCredentials

UNMARKED = OutputSettings(parameters=False)


class OutputMarker:
    """How one model deployment marks what it encodes: `model` (its source) names what made the
    outputs, as `outputs.model_names` says or by its safe `display_name`; the
    operator's `OutputSettings` say whether parameters go into files and who signs them (the signer
    is loaded, and proved, here: at the replica's start)."""

    def __init__(self, model: str, settings: OutputSettings | None = None) -> None:
        settings = settings or OutputSettings()
        self.model = settings.model_names.get(model) or display_name(model)  # never a folder's path
        self.parameters = settings.parameters
        credentials = settings.content_credentials
        self.credentials = ContentCredentials(credentials) if credentials is not None else None

    def images(self, request: SDXLRequest, result: SDXLResult, base_model: str | None = None) -> list[bytes]:
        """The result's images encoded, each with its own marks. `base_model`: the base model whose
        latents this deployment (the refiner) finished."""
        model, refiner = (base_model, self.model) if base_model is not None else (self.model, None)
        image_format = request.output_format
        marks = request.output_marks(result.seeds, model, refiner) if self.parameters else None
        images = [
            encode_image(pixels, image_format, marks[index] if marks else None)
            for index, pixels in enumerate(result.images)
        ]
        return [self.signed(image, CONTENT_TYPES[image_format], model, refiner) for image in images]

    def track(self, request: MusicGenRequest, result: MusicGenResult) -> bytes:
        """The result's track encoded with its marks."""
        marks = request.output_marks(result.seed, self.model) if self.parameters else None
        audio = encode_audio(result.waveform, result.sample_rate, request.format, marks)
        return self.signed(audio, content_type(request.format), self.model)

    def signed(self, data: bytes, media_type: str, model: str, refiner: str | None = None) -> bytes:
        """The output with its content credentials when a signer is configured."""
        if self.credentials is None:
            return data
        return self.credentials.sign(data, media_type, model, refiner)


def encode_images(
    request: SDXLRequest,
    result: SDXLResult,
    marker: OutputMarker | None = None,
    base_model: str | None = None,
) -> SDXLOutput:
    """An SDXL engine's result (base or refiner) as the deployment's output, marked by `marker` (none:
    plain files)."""
    marker = marker or OutputMarker("", UNMARKED)
    return SDXLOutput(
        images=marker.images(request, result, base_model),
        format=request.output_format,
        seeds=result.seeds,
        timings=result.timings,
        batch_size=result.batch_size,
    )


def encode_track(
    request: MusicGenRequest, result: MusicGenResult, marker: OutputMarker | None = None
) -> MusicGenOutput:
    """A MusicGen engine's result as the deployment's output, marked by `marker` (none: a plain file)."""
    marker = marker or OutputMarker("", UNMARKED)
    waveform: np.ndarray = result.waveform
    return MusicGenOutput(
        audio=marker.track(request, result),
        format=request.format,
        sample_rate=result.sample_rate,
        duration=len(waveform) / result.sample_rate,
        seed=result.seed,
        timings=result.timings,
        batch_size=result.batch_size,
    )
