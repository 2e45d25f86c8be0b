"""What the service answers, as pydantic models that need nothing heavy (no torch, Ray or diffusers):
the light client (`leap_ray.client`) and the server share them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from leap_ray.api.common import ErrorDetail
from leap_ray.api.progress import JobProgress, progress_json

AudioFormat = Literal["wav", "flac", "ogg", "mp3"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")


class SDXLImage(BaseModel):
    data: str = Field(description="Base64 of the encoded image.")
    format: Literal["png", "jpeg", "webp"] = Field(description="The image format (the request's).")
    seed: int = Field(description="The seed that reproduces this image.")


class SDXLResponse(BaseModel):
    images: list[SDXLImage] = Field(description="The images, in prompt order, each prompt's together.")
    timings: dict[str, float] = Field(description="Seconds spent encoding prompts and generating.")
    batch_size: int = Field(description="The most images in one denoising step this request shared.")


class MusicGenResponse(BaseModel):
    audio: str = Field(description="Base64 of the encoded track.")
    format: AudioFormat = Field(description="The audio container and codec (the request's format).")
    sample_rate: int = Field(description="Samples per second (32000 for MusicGen).")
    duration: float = Field(description="Length in seconds.")
    seed: int = Field(description="The seed that reproduces this track.")
    timings: dict[str, float] = Field(description="Seconds spent per stage (e.g. generate_s, encode_s).")
    batch_size: int = Field(description="The most tracks in one decoder step this track shared.")


class JobView(BaseModel):
    # The progress events (dataclasses) describe their fields in attribute docstrings: into the schema.
    model_config = ConfigDict(use_attribute_docstrings=True)

    id: str = Field(description="The job's id.")
    service: Literal["sdxl", "musicgen"] = Field(description="Which model runs the job.")
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    cancel_requested: bool = Field(description="A DELETE arrived; a running job stops at its next step.")
    created_at: float = Field(description="Unix time the job was accepted.")
    started_at: float | None = Field(description="Unix time a runner first started it.")
    finished_at: float | None = Field(description="Unix time it ended.")
    progress: JobProgress | None = Field(
        description="The last progress event: {step, total, timestep} for SDXL, with `stage` (base or "
        "refiner, each counting its own steps) when it has a refiner; {seconds, total} for MusicGen. "
        "Never a preview image."
    )
    error: ErrorDetail | None = Field(description="Why it failed, in the service's error shape.")
    outputs: list[str] = Field(description="URLs of the outputs, once it succeeded.")
    url: str = Field(description="This job's URL: GET to poll, DELETE to cancel.")
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds it waited in the queue (queued_s) and ran (run_s), once known.",
    )
    input: dict[str, Any] | None = Field(
        None, description="What was submitted (with its seed), tensors and audio summarised, not echoed."
    )
    seed: int | None = Field(
        None, description="The seed fixed at submission: the same input with it gives the same outputs."
    )

    # Unannotated: a return type would replace the progress events' schema with a bare object.
    @field_serializer("progress")
    def _progress_as_streamed(self, progress: JobProgress | None):
        """As the SSE progress events show it: no keys for what the event has not (no null stage)."""
        return None if progress is None else progress_json(progress)
