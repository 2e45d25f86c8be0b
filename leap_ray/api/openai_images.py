"""OpenAI's Images API, as its official clients send it (`client.images.generate`), translated into an
SDXL request: one validation (SDXLRequest's), one error shape. Our SDXL fields (seed,
num_inference_steps, negative_prompt, guidance_scale, ...) are accepted beside OpenAI's, which is
where the official client puts `extra_body`."""

import re
import time
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from leap_ray.api.images import PendingImage, UploadedImage
from leap_ray.api.sdxl_workflows import open_upload
from leap_ray.config import LIMITS

MODEL_IDS = ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
_STEPS = re.compile(r"[0-9]{1,6}")


class OpenAIImageRequest(BaseModel):
    """POST /v1/images/generations. OpenAI's own fields that have no SDXL meaning (quality,
    background, moderation, style, output_compression) are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"model": "sdxl", "prompt": "a lighthouse at dawn", "size": "512x512", "seed": 42}]
        },
    )

    EVENTS: ClassVar[str] = "image_generation"  # what its stream events are called

    prompt: str = Field(description="The prompt.", max_length=LIMITS.sdxl.max_prompt_chars)
    model: str = Field("sdxl", description=f"One of {', '.join(MODEL_IDS)}.")
    n: int = Field(1, ge=1, le=LIMITS.sdxl.max_images_per_prompt, description="Images to generate.")
    size: str = Field("1024x1024", description='"WIDTHxHEIGHT" in pixels, or "auto" (1024x1024).')
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="b64_json: the image in the response; url: a URL of a job output of ours."
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="The image format.")
    user: str | None = Field(None, description="The end user, for the operator's logs.")
    stream: bool = Field(False, description="Server-Sent Events: partial images, then the image.")
    partial_images: int = Field(0, ge=0, le=3, description="Partial images (latent previews) to stream.")
    quality: str | None = Field(None, description="OpenAI's; accepted and ignored.")
    background: str | None = Field(None, description="OpenAI's; accepted and ignored.")
    moderation: str | None = Field(None, description="OpenAI's; accepted and ignored.")
    style: str | None = Field(None, description="OpenAI's; accepted and ignored.")
    output_compression: int | None = Field(None, description="OpenAI's; accepted and ignored.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        if model not in MODEL_IDS:
            raise ValueError(f"unknown model {model!r}; this service serves {', '.join(MODEL_IDS)}")
        return model

    @field_validator("size")
    @classmethod
    def _width_by_height(cls, size: str) -> str:
        if size != "auto" and not _SIZE.fullmatch(size):
            raise ValueError('size must be "WIDTHxHEIGHT" (e.g. "1024x1024") or "auto"')
        return size

    def dimensions(self) -> tuple[int, int]:
        """(width, height)."""
        width, height = _SIZE.fullmatch("1024x1024" if self.size == "auto" else self.size).groups()
        return int(width), int(height)

    def sdxl_input(self) -> dict[str, Any]:
        """The SDXL request: OpenAI's fields mapped, ours (the extras) passed as they are."""
        width, height = self.dimensions()
        extras = dict(self.model_extra or {})
        steps = str(extras.get("num_inference_steps", 50))
        # Only a plausible count: else validation names it (int() refuses over 4,300 digits).
        if self.stream and self.partial_images and _STEPS.fullmatch(steps):
            extras.setdefault("preview_every", max(1, -(-int(steps) // (self.partial_images + 1))))
        return {
            "prompt": self.prompt,
            "num_images_per_prompt": self.n,
            "width": width,
            "height": height,
            "output_format": self.output_format,
            **extras,
        }

    def size_text(self) -> str:
        width, height = self.dimensions()
        return f"{width}x{height}"


class OpenAIImageEditRequest(OpenAIImageRequest):
    """POST /v1/images/edits, a multipart/form-data body as OpenAI's `client.images.edit` sends it:
    img2img, or inpainting with a mask (or the image's own transparency, as OpenAI reads it). Our SDXL
    fields (strength, seed, ...) may be form fields too, nested ones in bracket form
    (`loras[][name]`, `refiner[enabled]`), as the client writes them."""

    EVENTS: ClassVar[str] = "image_edit"

    image: bytes = Field(description="The image to edit: PNG, JPEG or WebP.")
    mask: bytes | None = Field(
        None,
        description="Where to edit: OpenAI's rule, its fully transparent pixels (a PNG with alpha); "
        "a mask without transparency is read as ours, white repainted. The image's size.",
    )
    size: str = Field(
        "auto",
        description='"auto": the image\'s size; or "WIDTHxHEIGHT", which must be that size (rounded '
        "down to a multiple of 8).",
    )

    def sdxl_input(self) -> dict[str, Any]:
        """The SDXL request, its image and mask opened (bytes, structure, header) but not decoded: the
        SDXL request's validation decodes each once, after its rules that need no pixels."""
        data = super().sdxl_input()
        if self.size == "auto":  # the image decides, as /v1/sdxl's img2img does
            del data["width"], data["height"]
        image = data["image"] = open_upload(self.image, "image")
        if self.mask is not None:
            data["mask_image"] = OpenAIMask(open_upload(self.mask, "mask"))
        elif image.may_be_transparent():  # else no pixel can be transparent: an img2img
            data["mask_image"] = TransparencyMask(image)
        return data

    def size_text(self) -> str:
        return "auto" if self.size == "auto" else super().size_text()


def _edited_where_transparent(alpha: Image.Image) -> Image.Image:
    return alpha.point(lambda value: 255 if value == 0 else 0)


class OpenAIMask(PendingImage):
    """OpenAI's mask, decoded as ours: white (repainted) where it is fully transparent. A mask without
    any transparency was drawn our way: its grey is read as it is."""

    def __init__(self, upload: UploadedImage) -> None:
        self.upload = upload

    @property
    def size(self) -> tuple[int, int]:
        return self.upload.size

    def decode(self, mode: str) -> Image.Image:
        luminance, alpha = self.upload.decode("LA").split()
        mask = luminance if alpha.getextrema()[0] == 255 else _edited_where_transparent(alpha)
        return mask.convert(mode)


class TransparencyMask(PendingImage):
    """OpenAI's rule for an edit without a mask: the image's fully transparent pixels are edited; no
    mask (an img2img) when it has none. Reads the image's own pixels, decoded once for both."""

    def __init__(self, image: UploadedImage) -> None:
        self.image = image

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def decode(self, mode: str) -> Image.Image | None:
        alpha = self.image.decode("LA").getchannel("A")
        return _edited_where_transparent(alpha).convert(mode) if alpha.getextrema()[0] == 0 else None


def image_event(
    kind: Literal["partial_image", "completed"], request: OpenAIImageRequest, b64: str, **fields: Any
) -> dict[str, Any]:
    """An `image_generation.*` (or, for an edit, `image_edit.*`) stream event, as OpenAI's client
    parses it."""
    return {
        "type": f"{request.EVENTS}.{kind}",
        "b64_json": b64,
        "created_at": int(time.time()),
        "size": request.size_text(),
        "quality": "auto",
        "background": "opaque",
        "output_format": request.output_format,
        **fields,
    }


NO_TOKENS = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
