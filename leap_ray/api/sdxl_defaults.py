"""What a client may start an SDXL request from for the model being served (GET /v1/sdxl/defaults, the
playground's form): its native size and the steps worth waiting for. A request's own defaults do not
change with the model (API semantics stay fixed); these are suggestions a client fills in."""

from pydantic import BaseModel, Field

from leap_ray.api.sdxl_checks import SDXLModelSpec
from leap_ray.api.sdxl_fields import SDXLFields
from leap_ray.config import LIMITS

_LIMITS = LIMITS.sdxl


class SDXLDefaults(BaseModel):
    """Values for the request's fields of the same names, within the request's bounds."""

    height: int = Field(description="The model's native height in pixels (1024 for SDXL).")
    width: int = Field(description="The model's native width in pixels (1024 for SDXL).")
    num_inference_steps: int = Field(
        description="Denoising steps suggested for this model: the request's default (50) unless the "
        "operator says otherwise (`sdxl.suggested_steps`); few for a tiny model."
    )


def _within_size_limits(side: int) -> int:
    """A side the request accepts: a multiple of 8 within the operator's size limits."""
    return max(_LIMITS.min_size, min(side, _LIMITS.max_size)) // 8 * 8


def sdxl_defaults(spec: SDXLModelSpec) -> SDXLDefaults:
    """The suggestions for the model `spec` describes; the request's defaults where it says nothing."""
    fields = SDXLFields.model_fields
    height = spec.native_size or fields["height"].default
    width = spec.native_size or fields["width"].default
    steps = spec.suggested_steps or fields["num_inference_steps"].default
    return SDXLDefaults(
        height=_within_size_limits(height),
        width=_within_size_limits(width),
        num_inference_steps=max(1, min(steps, _LIMITS.max_steps)),
    )
