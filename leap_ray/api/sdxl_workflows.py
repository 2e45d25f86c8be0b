"""The fields of SDXL's workflows beyond text-to-image: an uploaded image and mask (img2img,
inpainting), LoRA adapters by name, and the refiner's options. Bounds come from the operator's limits
and appear in `/openapi.json`."""

from typing import Annotated

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator
from pydantic.json_schema import WithJsonSchema

from leap_ray.api.common import FiniteFloat
from leap_ray.api.images import PendingImage, UploadedImage, image_data_uri, open_image
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest

_LIMITS = LIMITS.sdxl


def _opened(value: object) -> PendingImage:
    """An image field's value opened within the operator's bounds (bytes, structure, header: no
    pixels); an adapter's image that is open already (OpenAI's edits) as it is."""
    if isinstance(value, PendingImage):
        return value
    return open_image(value, _LIMITS.max_image_bytes, _LIMITS.max_size)


def open_upload(value: object, field: str, param: str | None = None) -> UploadedImage:
    """Another API's image field (OpenAI's, Replicate's, AUTOMATIC1111's) opened within SDXL's bounds,
    as ours are; what is wrong is an InvalidRequest naming `field` (`param`: the error's parameter,
    when that API's path to the field differs from its name)."""
    try:
        return open_image(value, _LIMITS.max_image_bytes, _LIMITS.max_size)
    except ValueError as error:
        raise InvalidRequest(f"{field}: {error}", param=param or field) from None


# An uploaded image field: base64 or a data: URI in JSON (a PIL image through a handle), written back
# as a PNG data: URI. Validating the field opens it; the request decodes it (image in RGB, mask in
# grey: `leap_ray.api.sdxl_checks`) once its rules that need no pixels hold, so a validated request
# holds a PIL image.
ImageInput = Annotated[
    Image.Image,
    PlainValidator(_opened),
    PlainSerializer(image_data_uri, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "image/*",
            "maxLength": _LIMITS.max_image_bytes * 4 // 3 + 1024,
            "description": "Base64 or a data: URI of a PNG, JPEG or WebP image.",
        }
    ),
]
LoraName = Annotated[str, Field(min_length=1, max_length=200)]


class LoraChoice(BaseModel):
    """One LoRA adapter a request applies, by the name the operator gave it."""

    model_config = ConfigDict(extra="forbid")

    name: LoraName = Field(
        description="The adapter's name in the service's config (GET /v1/sdxl/adapters lists them)."
    )
    scale: FiniteFloat = Field(
        1.0,
        ge=-_LIMITS.max_lora_scale,
        le=_LIMITS.max_lora_scale,
        description="How strongly the adapter acts: 0 is off, 1 as trained.",
    )


DEFAULT_HAND_OFF = 0.8  # diffusers' documented split of the base and refiner experts


class RefinerOptions(BaseModel):
    """The SDXL refiner's stage: the base model stops at `denoising_end` and hands its latents to the
    refiner, which finishes them (diffusers' "ensemble of expert denoisers")."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Whether to refine; false is as if `refiner` were absent.")
    denoising_start: FiniteFloat | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Where the refiner starts, a fraction of the denoising in (0, 1); default the "
        "request's denoising_end. When that is absent, the base stops here (0.8 when neither is given).",
    )
    num_inference_steps: int | None = Field(
        None,
        ge=1,
        le=_LIMITS.max_steps,
        description="Steps of the refiner's full schedule (it runs the part after denoising_start); "
        "default the request's num_inference_steps.",
    )
    aesthetic_score: FiniteFloat = Field(
        6.0, ge=0.0, le=10.0, description="The refiner's aesthetic-score conditioning (LAION score)."
    )
    negative_aesthetic_score: FiniteFloat = Field(
        2.5, ge=0.0, le=10.0, description="The aesthetic score of the negative side of guidance."
    )
