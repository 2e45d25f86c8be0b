"""What a client may start an SDXL request from for the model being served (GET /v1/sdxl/defaults, the
playground's form): its native size and the steps worth waiting for. A request's own defaults do not
change with the model (API semantics stay fixed); these are suggestions a client fills in."""

import math

from pydantic import BaseModel, Field

from leap_ray.api.sdxl_checks import SDXLModelSpec
from leap_ray.api.sdxl_fields import SDXLFields
from leap_ray.config import LIMITS, SDXLLimits


class SDXLDefaults(BaseModel):
    """Values for the request's fields of the same names, within the request's bounds."""

    height: int = Field(description="The model's native height in pixels (1024 for SDXL).")
    width: int = Field(description="The model's native width in pixels (1024 for SDXL).")
    num_inference_steps: int = Field(
        description="Denoising steps suggested for this model: the request's default (50) unless the "
        "operator says otherwise (`sdxl.suggested_steps`); few for a tiny model."
    )


def _within_size_limits(side: int, limits: SDXLLimits) -> int:
    """A side the request accepts for one square image: a multiple of 8, at most the operator's
    largest side and the pixel budget's square root, at least the first multiple of 8 from the
    smallest side (rounding that down would fall below it)."""
    largest = min(side, limits.max_size, math.isqrt(limits.max_pixels)) // 8 * 8
    smallest = -(-limits.min_size // 8) * 8
    return max(smallest, largest)


def sdxl_defaults(spec: SDXLModelSpec, limits: SDXLLimits = LIMITS.sdxl) -> SDXLDefaults:
    """The suggestions for the model `spec` describes, within `limits` (the operator's, which the
    request's schema has); the request's defaults where the model says nothing."""
    fields = SDXLFields.model_fields
    height = spec.native_size or fields["height"].default
    width = spec.native_size or fields["width"].default
    steps = spec.suggested_steps or fields["num_inference_steps"].default
    return SDXLDefaults(
        height=_within_size_limits(height, limits),
        width=_within_size_limits(width, limits),
        num_inference_steps=max(1, min(steps, limits.max_steps)),
    )
