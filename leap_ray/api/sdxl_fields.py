"""The SDXL request's fields, as clients see them in `/openapi.json`: every parameter of diffusers'
`StableDiffusionXLPipeline.__call__` that the service promises, with its bounds and description, plus
seed, output format, scheduler and the workflows' fields. The groups the fields form (the texts, the
embeddings, the arguments that set up the call) are listed here once, for the rules and conversions
of `leap_ray.api.sdxl` and `leap_ray.api.sdxl_checks`."""

from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from pydantic.json_schema import SkipJsonSchema

from leap_ray.api.common import MAX_SEED, SCHEDULERS, FiniteFloat, capped, prompt_text
from leap_ray.api.sdxl_workflows import ImageInput, LoraChoice, RefinerOptions
from leap_ray.api.tensors import TensorInput
from leap_ray.config import LIMITS

_LIMITS = LIMITS.sdxl
MAX_CONDITIONING_SIZE = 8192

# The tensors diffusers' SDXL pipeline can hand to `callback_on_step_end` (`_callback_tensor_inputs`).
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")


# diffusers' StableDiffusionXLInpaintPipeline's default guidance (its text2img and img2img take 5.0).
INPAINT_GUIDANCE_SCALE = 7.5


class Embedding(NamedTuple):
    """What an embedding field must be: its number of dimensions and the `SDXLModelSpec` attribute that
    gives the width of its last one; for the per-token ones, the text fields they stand in for and the
    pooled field that must come with them."""

    ndim: int
    width: str
    replaces: tuple[str, ...] = ()
    pooled: str | None = None


# The texts of a request, one per text encoder on each side of guidance, and the embeddings that a
# client may send instead.
TEXT_FIELDS = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
EMBEDDING_FIELDS = {
    "prompt_embeds": Embedding(3, "text_embed_width", ("prompt", "prompt_2"), "pooled_prompt_embeds"),
    "negative_prompt_embeds": Embedding(
        3, "text_embed_width", ("negative_prompt", "negative_prompt_2"), "negative_pooled_prompt_embeds"
    ),
    "pooled_prompt_embeds": Embedding(2, "pooled_embed_width"),
    "negative_pooled_prompt_embeds": Embedding(2, "pooled_embed_width"),
}
# `StableDiffusionXLPipeline.__call__` arguments by role: the text (and its tensors) of each request,
# and those that set up the call itself (sizes, steps, micro-conditioning).
PROMPT_PARAMETERS = (*TEXT_FIELDS, "latents", *EMBEDDING_FIELDS, "guidance_scale")
CALL_PARAMETERS = (
    "height",
    "width",
    "num_inference_steps",
    "denoising_end",
    "eta",
    "guidance_rescale",
    "original_size",
    "crops_coords_top_left",
    "target_size",
    "negative_original_size",
    "negative_crops_coords_top_left",
    "negative_target_size",
)

PromptText = prompt_text(_LIMITS.max_prompt_chars)
_DEFAULT_SIZE = int(capped(1024, _LIMITS.max_size)) // 8 * 8
Prompts = PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=_LIMITS.max_prompts)]
Size = Annotated[int, Field(ge=_LIMITS.min_size, le=_LIMITS.max_size, multiple_of=8)]
Coordinate = Annotated[int, Field(ge=0, le=MAX_CONDITIONING_SIZE)]
Extent = Annotated[int, Field(ge=1, le=MAX_CONDITIONING_SIZE)]


def _callable_or_none(value: object) -> Callable[..., Any] | None:
    if value is None or callable(value):
        return value
    raise ValueError(
        "callback_on_step_end is a Python callable and is accepted only through a deployment handle; "
        "over HTTP it cannot be sent"
    )


SDXL_EXAMPLE = {
    "prompt": "a lighthouse at dawn, oil painting",
    "negative_prompt": "blurry",
    "height": 512,
    "width": 512,
    "num_inference_steps": 20,
    "guidance_scale": 6.0,
    "seed": 42,
}


class SDXLFields(BaseModel):
    """The fields of an SDXL request (their descriptions are the API docs), and what they say taken
    together: how many prompts and images, which workflow. `leap_ray.api.sdxl.SDXLRequest` adds the
    rules that join fields and the conversions into pipeline arguments."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, json_schema_extra={"examples": [SDXL_EXAMPLE]}
    )

    prompt: Prompts | None = Field(None, description="The prompt or prompts to guide the image generation.")
    prompt_2: Prompts | None = Field(
        None, description="Prompts for the second tokenizer and text encoder; `prompt` is used when absent."
    )
    height: Size = Field(
        _DEFAULT_SIZE, description="Height in pixels of the generated image, a multiple of 8 (default 1024)."
    )
    width: Size = Field(
        _DEFAULT_SIZE, description="Width in pixels of the generated image, a multiple of 8 (default 1024)."
    )
    num_inference_steps: int = Field(
        int(capped(50, _LIMITS.max_steps)),
        ge=1,
        le=_LIMITS.max_steps,
        description="Number of denoising steps (default 50).",
    )
    denoising_end: FiniteFloat | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Fraction of the denoising process to complete before stopping early, in (0, 1].",
    )
    guidance_scale: FiniteFloat = Field(
        5.0,
        ge=0.0,
        le=_LIMITS.max_guidance_scale,
        description="Classifier-free guidance scale; guidance is off at 1 or below. "
        f"High values can hurt quality. Default 5.0, or {INPAINT_GUIDANCE_SCALE} for inpainting "
        "(as diffusers' pipelines).",
    )
    negative_prompt: Prompts | None = Field(
        None,
        description="Prompts not to guide the generation. When absent, the negative conditioning is zeros "
        "(SDXL's force_zeros_for_empty_prompt), so negative_prompt_2 alone has no effect.",
    )
    negative_prompt_2: Prompts | None = Field(
        None, description="Negative prompts for the second text encoder; acts only with negative_prompt."
    )
    num_images_per_prompt: int = Field(
        1, ge=1, le=_LIMITS.max_images_per_prompt, description="Number of images to generate per prompt."
    )
    eta: FiniteFloat = Field(
        0.0, ge=0.0, le=1.0, description="DDIM's eta; acts only with the ddim scheduler."
    )
    latents: TensorInput | None = Field(
        None,
        description="Pre-generated noisy latents of shape (images, 4, height/8, width/8); they replace "
        "the seeded noise. Custom latents can give unpredictable results.",
    )
    prompt_embeds: TensorInput | None = Field(
        None, description="Pre-generated text embeddings (prompts, tokens, width), instead of prompt."
    )
    negative_prompt_embeds: TensorInput | None = Field(
        None, description="Pre-generated negative text embeddings, same shape as prompt_embeds."
    )
    pooled_prompt_embeds: TensorInput | None = Field(
        None,
        description="Pre-generated pooled text embeddings (prompts, width); required with prompt_embeds.",
    )
    negative_pooled_prompt_embeds: TensorInput | None = Field(
        None, description="Pre-generated negative pooled embeddings; required with negative_prompt_embeds."
    )
    guidance_rescale: FiniteFloat = Field(
        0.0, ge=0.0, le=1.0, description="Guidance rescale factor (acts with guidance on), in [0, 1]."
    )
    original_size: tuple[Extent, Extent] | None = Field(
        None,
        description="SDXL micro-conditioning (height, width) of the source; defaults to (height, width).",
    )
    crops_coords_top_left: tuple[Coordinate, Coordinate] = Field(
        (0, 0), description="SDXL micro-conditioning: top-left crop coordinates (y, x)."
    )
    target_size: tuple[Extent, Extent] | None = Field(
        None, description="SDXL micro-conditioning: target (height, width); defaults to (height, width)."
    )
    negative_original_size: tuple[Extent, Extent] | None = Field(
        None,
        description="Negative micro-conditioning on resolution. Acts only when negative_target_size is "
        "given too (img2img and inpainting, as their pipelines: alone too).",
    )
    negative_crops_coords_top_left: tuple[Coordinate, Coordinate] = Field(
        (0, 0),
        description="Negative micro-conditioning on crop coordinates. Acts only when negative_original_size "
        "and negative_target_size are both given (never in img2img and inpainting, as their pipelines).",
    )
    negative_target_size: tuple[Extent, Extent] | None = Field(
        None,
        description="Negative micro-conditioning on target resolution. Acts only when negative_original_size "
        "is given too (img2img and inpainting, as their pipelines: alone too).",
    )
    callback_on_step_end: SkipJsonSchema[
        Annotated[Callable[..., dict[str, torch.Tensor]] | None, PlainValidator(_callable_or_none)]
    ] = Field(
        None,
        description="callback(pipeline, step, timestep, tensors) -> tensors, run after each denoising step "
        "with only this request's tensors; setting `pipeline._interrupt = True` stops this request. "
        "Deployment handles only.",
    )
    callback_on_step_end_tensor_inputs: list[Literal[CALLBACK_TENSOR_INPUTS]] = Field(  # type: ignore[valid-type]
        ["latents"],
        max_length=len(CALLBACK_TENSOR_INPUTS),
        description="Tensors passed to callback_on_step_end.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Seed of image 0; image j uses seed + j (wrapping to 0 past 2^53-1). Random when absent.",
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Encoding of the images.")
    apply_watermark: bool = Field(
        True,
        description="Mark the images with SDXL's invisible watermark, as diffusers does "
        "(StableDiffusionXLWatermarker: 48 bits, dwtDct); images under 256 pixels wide (or 256² in all) "
        "are never marked. Acts only where the operator left the service's watermark on.",
    )
    stream: bool = Field(False, description="Answer with progress events, as with Accept: text/event-stream.")
    preview_every: int | None = Field(
        None,
        ge=1,
        le=_LIMITS.max_steps,
        description="With progress events: every N steps, a small preview (1/8 size PNG, base64) of the "
        "first image, computed cheaply from the latents.",
    )
    scheduler: Literal[SCHEDULERS] | None = Field(  # type: ignore[valid-type]
        None,
        description="Sampler: the model's own (Euler for SDXL base) when absent, or "
        f"{', '.join(SCHEDULERS)}. eta acts only under ddim.",
    )
    image: ImageInput | None = Field(
        None,
        description="img2img: the starting image (base64 or a data: URI of PNG, JPEG or WebP, at most "
        f"{_LIMITS.max_image_bytes} bytes and {_LIMITS.max_size} pixels a side). The result keeps its "
        "size, rounded down to a multiple of 8; height and width default to it.",
    )
    mask_image: ImageInput | None = Field(
        None,
        description="Inpainting: with `image`, a mask of the same size; white is repainted, black kept.",
    )
    strength: FiniteFloat | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="With `image`: how much of it to repaint, in (0, 1]; 1 ignores it. Only the last "
        "strength × num_inference_steps steps run. Default 0.3 (img2img), 0.9999 (inpainting).",
    )
    loras: Annotated[list[LoraChoice], BeforeValidator(lambda value: [] if value is None else value)] = Field(
        [],
        max_length=_LIMITS.max_loras,
        description=f"LoRA adapters to apply, at most {_LIMITS.max_loras}, by the names the service lists "
        "(null: none, as clients that send every optional field write it).",
    )
    refiner: RefinerOptions | None = Field(
        None,
        description="Finish the image with the SDXL refiner: the base stops at denoising_end and the "
        "refiner deployment denoises the rest.",
    )

    @property
    def prompt_count(self) -> int:
        if self.prompt_embeds is not None:
            return int(self.prompt_embeds.shape[0])
        return len(self.prompt) if isinstance(self.prompt, list) else 1

    @property
    def image_count(self) -> int:
        return self.prompt_count * self.num_images_per_prompt

    @property
    def wants_refiner(self) -> bool:
        return self.refiner is not None and self.refiner.enabled

    @property
    def workflow(self) -> Literal["text2img", "img2img", "inpaint"]:
        """Which of diffusers' SDXL pipelines this request is a call of."""
        if self.image is None:
            return "text2img"
        return "img2img" if self.mask_image is None else "inpaint"

    def effective_strength(self) -> float:
        """`strength`, or diffusers' default for the workflow."""
        if self.strength is not None:
            return self.strength
        return 0.9999 if self.workflow == "inpaint" else 0.3
