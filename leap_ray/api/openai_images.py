"""OpenAI's Images API, as its official clients send it (`client.images.generate`), translated into an
SDXL request: one validation (SDXLRequest's), one error shape. Our SDXL fields (seed,
num_inference_steps, negative_prompt, guidance_scale, ...) are accepted beside OpenAI's, which is
where the official client puts `extra_body`."""

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leap_ray.config import LIMITS

MODEL_IDS = ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


class OpenAIImageRequest(BaseModel):
    """POST /v1/images/generations. OpenAI's own fields that have no SDXL meaning (quality,
    background, moderation, style, output_compression) are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"model": "sdxl", "prompt": "a lighthouse at dawn", "size": "512x512", "seed": 42}]
        },
    )

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
        if self.stream and self.partial_images:
            steps = extras.get("num_inference_steps", 50)
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


def image_event(
    kind: Literal["partial_image", "completed"], request: OpenAIImageRequest, b64: str, **fields: Any
) -> dict[str, Any]:
    """An `image_generation.*` stream event, as OpenAI's client parses it."""
    return {
        "type": f"image_generation.{kind}",
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
