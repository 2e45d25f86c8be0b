"""Replicate's public models as drop-ins: the inputs of `stability-ai/sdxl` and `meta/musicgen`, with
their names and defaults, each converting itself into our /v1/sdxl or /v1/musicgen request. Fields
with no effect here are accepted as Replicate documents them; values we cannot honour are refused
with a 422 naming them. The values are checked again, and bounded, by our own request models, whose
errors name the public field (`public_param`)."""

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from leap_ray.api.images import ResizedImage
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.api.sdxl_workflows import open_upload
from leap_ray.errors import InvalidRequest, LeapRayError, name_field

# Replicate's scheduler names, as ours; Replicate's others (KarrasDPM, HeunDiscrete, PNDM) we lack.
SDXL_SCHEDULERS = {
    "DDIM": "ddim",
    "K_EULER": "euler",
    "K_EULER_ANCESTRAL": "euler_ancestral",
    "DPMSolverMultistep": "dpmpp_2m",
}


def _random_when_negative(seed: int | None) -> int | None:
    """Replicate's models take -1 (or nothing) for a random seed."""
    return None if seed is None or seed < 0 else seed


def _refused(field: str, value: object, why: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {value!r} is not supported here: {why}", param=field)


class PublicInput(BaseModel):
    """A public model's input: Replicate's field names and defaults, nothing else (extra: 422)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    # Our request's fields, by the public field each comes from, for errors our model raises.
    PUBLIC_NAMES: ClassVar[dict[str, str]] = {}
    # The fields that take a file: a data: URI, or the URL of a file uploaded with POST /v1/files.
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def service_input(self) -> dict[str, Any]:
        """The same request as our service's body (validated there again)."""
        raise NotImplementedError


class SDXLInput(PublicInput):
    """`stability-ai/sdxl`'s input on Replicate."""

    PUBLIC_NAMES: ClassVar[dict[str, str]] = {
        "num_images_per_prompt": "num_outputs",
        "strength": "prompt_strength",
        "mask_image": "mask",
        "denoising_end": "high_noise_frac",
        "refiner.denoising_start": "high_noise_frac",
        "refiner": "refine",
    }
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("image", "mask")

    prompt: str = Field("An astronaut riding a rainbow unicorn", description="Input prompt.")
    negative_prompt: str = Field("", description="Input negative prompt.")
    image: str | None = Field(
        None, description="img2img or inpainting: the input image, as a data: URI or an uploaded file's URL."
    )
    mask: str | None = Field(
        None, description="Inpainting: with `image`, black areas are kept and white ones repainted."
    )
    width: int = Field(1024, description="Width of the output image.")
    height: int = Field(1024, description="Height of the output image.")
    num_outputs: int = Field(1, ge=1, le=4, description="Number of images to output (1-4).")
    scheduler: Literal[tuple(SDXL_SCHEDULERS)] = Field(  # type: ignore[valid-type]
        "K_EULER", description="Scheduler: DDIM, K_EULER, K_EULER_ANCESTRAL or DPMSolverMultistep."
    )
    num_inference_steps: int = Field(50, ge=1, le=500, description="Number of denoising steps.")
    guidance_scale: float = Field(7.5, ge=1, le=50, description="Scale for classifier-free guidance.")
    prompt_strength: float = Field(
        0.8, ge=0, le=1, description="With `image`: how much of it is repainted; 1.0 repaints it all."
    )
    seed: int | None = Field(None, description="Random seed; blank or -1 for a random one.")
    refine: Literal["no_refiner", "expert_ensemble_refiner", "base_image_refiner"] = Field(
        "no_refiner",
        description="expert_ensemble_refiner: the base hands its latents to the refiner at "
        "high_noise_frac. base_image_refiner (refining the finished image) is not supported here.",
    )
    high_noise_frac: float = Field(
        0.8, ge=0, le=1, description="With expert_ensemble_refiner: the fraction of noise the base handles."
    )
    refine_steps: int | None = Field(
        None, description="Steps of base_image_refiner; has no effect with the other choices."
    )
    apply_watermark: bool = Field(True, description="Mark the images with SDXL's invisible watermark.")
    lora_scale: float = Field(
        0.6, ge=0, le=1, description="Scale of replicate_weights' LoRA; no effect without them."
    )
    replicate_weights: str | None = Field(
        None, description="A Replicate-trained LoRA's weights: not supported here (our adapters: loras)."
    )
    disable_safety_checker: bool = Field(
        False, description="Accepted and ignored: this service runs no safety checker."
    )

    @model_validator(mode="after")
    def _honourable(self) -> "SDXLInput":
        if self.refine == "base_image_refiner":
            raise _refused("refine", self.refine, "use expert_ensemble_refiner")
        if self.replicate_weights:
            raise _refused("replicate_weights", "…", "serve the LoRA as an adapter (loras)")
        if self.mask is not None and self.image is None:
            raise InvalidRequest("mask: needs an image to inpaint", param="mask")
        return self

    def service_input(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt or None,
            "num_images_per_prompt": self.num_outputs,
            "scheduler": SDXL_SCHEDULERS[self.scheduler],
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "seed": _random_when_negative(self.seed),
            "apply_watermark": self.apply_watermark,
        }
        body.update(self._images())
        if self.refine == "expert_ensemble_refiner":
            body.update(denoising_end=self.high_noise_frac, refiner={"denoising_start": self.high_noise_frac})
        return body

    def _images(self) -> dict[str, Any]:
        """As cog-sdxl runs them: text-to-image at width × height; img2img at the image's own size
        (width and height are not used); inpainting at width × height, the image and mask resized
        to it. Opens (no decode) the uploads: for a worker thread."""
        size = {"width": self.width, "height": self.height}
        if self.image is None:
            return size
        if self.mask is None:
            return {"image": self.image, "strength": self.prompt_strength}
        target = (self.width, self.height)
        return {
            "image": ResizedImage(open_upload(self.image, "image", "input.image"), target),
            "mask_image": ResizedImage(open_upload(self.mask, "mask", "input.mask"), target),
            "strength": self.prompt_strength,
            **size,
        }


class MusicGenInput(PublicInput):
    """`meta/musicgen`'s input on Replicate."""

    PUBLIC_NAMES: ClassVar[dict[str, str]] = {
        "melody": "input_audio",
        "format": "output_format",
        "guidance_scale": "classifier_free_guidance",
    }
    FILE_FIELDS: ClassVar[tuple[str, ...]] = ("input_audio",)

    model_version: Literal["stereo-melody-large", "stereo-large", "melody-large", "large"] = Field(
        "stereo-melody-large",
        description="Which MusicGen: every choice is answered by the one this service serves (mono).",
    )
    prompt: str = Field(description="A description of the music you want to generate.")
    input_audio: str | None = Field(
        None,
        description="A melody the track follows (a data: URI or an uploaded file's URL); continuation is "
        "not supported.",
    )
    duration: int = Field(8, description="Duration of the generated audio in seconds.")
    continuation: bool = Field(False, description="Continue input_audio: not supported here (false).")
    continuation_start: int = Field(0, ge=0, description="With continuation only: no effect here.")
    continuation_end: int | None = Field(None, ge=0, description="With continuation only: no effect here.")
    multi_band_diffusion: bool = Field(False, description="Decode with MultiBand Diffusion: not supported.")
    normalization_strategy: Literal["loudness", "clip", "peak", "rms"] = Field(
        "loudness",
        description="How the audio is scaled: only clip (samples clipped to full scale) is done here; "
        "the default (loudness) applies only when the field is absent, as clip.",
    )
    top_k: int = Field(250, description="Sample among the k likeliest tokens.")
    top_p: float = Field(0.0, description="Nucleus sampling threshold; 0 turns it off.")
    temperature: float = Field(1.0, description="Softmax temperature.")
    classifier_free_guidance: float = Field(3.0, description="Classifier-free guidance scale.")
    output_format: Literal["wav", "mp3"] = Field("wav", description="Output format.")
    seed: int | None = Field(None, description="Random seed; blank or -1 for a random one.")

    @model_validator(mode="after")
    def _honourable(self) -> "MusicGenInput":
        if self.continuation:
            raise _refused("continuation", True, "input_audio guides the melody only")
        if self.multi_band_diffusion:
            raise _refused("multi_band_diffusion", True, "tracks are decoded with EnCodec")
        if "normalization_strategy" in self.model_fields_set and self.normalization_strategy != "clip":
            raise _refused("normalization_strategy", self.normalization_strategy, "only clip is done here")
        return self

    def service_input(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "duration": self.duration,
            "format": self.output_format,
            "melody": self.input_audio,
            "seed": _random_when_negative(self.seed),
            "guidance_scale": self.classifier_free_guidance,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
        }


@dataclass(frozen=True)
class ReplicateModel:
    """A model Replicate's clients may name: ours (our request as it is) or a public one's drop-in."""

    name: str  # owner/name
    service: Literal["sdxl", "musicgen"]
    description: str
    public_input: type[PublicInput] | None = None
    known_versions: tuple[str, ...] = ()  # the public model's version ids that clients pin

    @property
    def request_type(self) -> type[BaseModel]:
        return SDXLRequest if self.service == "sdxl" else MusicGenRequest

    @property
    def file_fields(self) -> tuple[str, ...]:
        """The input's fields that take a file, which may name one uploaded with POST /v1/files."""
        if self.public_input is not None:
            return self.public_input.FILE_FIELDS
        return ("image", "mask_image") if self.service == "sdxl" else ("melody",)

    @cached_property
    def openapi_schema(self) -> dict[str, Any]:
        """The version's schema, as Replicate's clients read it: Input and Output."""
        input_schema = (self.public_input or self.request_type).model_json_schema()
        uri = {"type": "string", "format": "uri"}
        output = {"type": "array", "items": uri} if self.service == "sdxl" else uri
        return {
            "openapi": "3.0.2",
            "info": {"title": self.name, "version": "0.1.0"},
            "components": {"schemas": {"Input": input_schema, "Output": {"title": "Output", **output}}},
        }

    @cached_property
    def version(self) -> str:
        """This service's version of the model: a hash of its name and its schema."""
        text = json.dumps([self.name, self.openapi_schema], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def name_public_fields(self, error: LeapRayError) -> None:
        """An error about one of our fields (`input.<ours>`) names the field this model's clients
        gave instead, in its `param` and at the head of its message."""
        if self.public_input is not None:
            name_field(error, self.public_input.PUBLIC_NAMES, prefix="input.")


_MODELS = (
    ReplicateModel("leap-ray/sdxl", "sdxl", "Stable Diffusion XL: the body of POST /v1/sdxl as input."),
    ReplicateModel("leap-ray/musicgen", "musicgen", "MusicGen: the body of POST /v1/musicgen as input."),
    ReplicateModel(
        "stability-ai/sdxl",
        "sdxl",
        "Stable Diffusion XL with stability-ai/sdxl's inputs on Replicate.",
        SDXLInput,
        (
            "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
            "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
            "c221b2b8ef527988fb59bf24a8b97c4561f1c671f73bd389f866bfb27c061316",
        ),
    ),
    ReplicateModel(
        "meta/musicgen",
        "musicgen",
        "MusicGen with meta/musicgen's inputs on Replicate.",
        MusicGenInput,
        (
            "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb",
            "b05b1dff1d8c6dc63d14b0cdb42135378dcb87f6373b0d3d341ede46e59e2b38",
            "7be0f12c54a8d033a0fbd14418c9af98962da9a86f5ff7811f9b3423a1f0b7d7",
            "7a76a8258b23fae65c5a22debb8841d1d7e816b75c2f24218cd2bd8573787906",
        ),
    ),
)
REPLICATE_MODELS = {model.name: model for model in _MODELS}


def model_of_version(version: str) -> ReplicateModel | None:
    """The model a prediction's `version` names: `owner/name`, `owner/name:id`, our version id, or a
    public version id its clients pin."""
    name, colon, version_id = version.partition(":")
    if not colon:  # one part: a model's name or a version id
        version_id = name
        if name in REPLICATE_MODELS:
            return REPLICATE_MODELS[name]
    named = [REPLICATE_MODELS[name]] if name in REPLICATE_MODELS else [] if colon else list(_MODELS)
    return next((m for m in named if version_id in (m.version, *m.known_versions)), None)
