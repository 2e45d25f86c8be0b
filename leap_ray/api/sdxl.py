"""The SDXL request: every parameter of diffusers' `StableDiffusionXLPipeline.__call__` that the
service promises, with the bounds clients see in `/openapi.json`, plus seed, output format and
scheduler. A request converts itself into pipeline arguments (`to_pipeline_kwargs`)."""

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from leap_ray.api.common import MAX_SEED, FiniteFloat, capped, offset_seed, prompt_text
from leap_ray.api.responses import SDXLImage, SDXLResponse
from leap_ray.api.sdxl_workflows import DEFAULT_HAND_OFF, ImageInput, LoraChoice, MaskInput, RefinerOptions
from leap_ray.api.tensors import TensorInput
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest

_LIMITS = LIMITS.sdxl
MAX_CONDITIONING_SIZE = 8192

# The tensors diffusers' SDXL pipeline can hand to `callback_on_step_end` (`_callback_tensor_inputs`).
CALLBACK_TENSOR_INPUTS = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")
SCHEDULERS = ("ddim", "euler", "euler_ancestral", "dpmpp_2m")
# `StableDiffusionXLPipeline.__call__` arguments by role: the text (and its tensors) of each request,
# and those that requests sharing one pipeline call must agree on (the engine groups by them).
PROMPT_PARAMETERS = (
    "prompt",
    "prompt_2",
    "negative_prompt",
    "negative_prompt_2",
    "latents",
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "guidance_scale",
)
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

# What the refiner's call takes from the base request's CALL_PARAMETERS: not these.
_BASE_ONLY = ("height", "width", "num_inference_steps", "denoising_end")

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


@dataclass(frozen=True)
class SDXLModelSpec:
    """What a loaded model accepts, for checks that depend on it (tensor shapes), and what the graph
    around it offers (a refiner, LoRA adapters)."""

    latent_channels: int
    vae_scale_factor: int
    text_embed_width: int
    pooled_embed_width: int
    text_tokens: int
    refiner: bool = False
    loras: tuple[str, ...] = ()


SDXL_EXAMPLE = {
    "prompt": "a lighthouse at dawn, oil painting",
    "negative_prompt": "blurry",
    "height": 512,
    "width": 512,
    "num_inference_steps": 20,
    "guidance_scale": 6.0,
    "seed": 42,
}


class SDXLRequest(BaseModel):
    """One SDXL generation. Image j of a request (counting num_images_per_prompt images for each
    prompt in order) is drawn with `torch.Generator().manual_seed(seed + j)`, whatever else shares
    its batch, so a solo diffusers call with `generator=[Generator().manual_seed(seed + j) ...]`
    reproduces it."""

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
        "High values can hurt quality.",
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
        description="Sampler: the model's own (Euler for SDXL base) when absent, or ddim, euler, "
        "euler_ancestral, dpmpp_2m. eta acts only under ddim.",
    )
    image: ImageInput | None = Field(  # type: ignore[valid-type]
        None,
        description="img2img: the starting image (base64 or a data: URI of PNG, JPEG or WebP, at most "
        f"{_LIMITS.max_image_bytes} bytes and {_LIMITS.max_size} pixels a side). The result keeps its "
        "size, rounded down to a multiple of 8; height and width default to it.",
    )
    mask_image: MaskInput | None = Field(  # type: ignore[valid-type]
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

    _image_encoding_seed: int | None = PrivateAttr(None)

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

    def lora_scales(self) -> tuple[tuple[str, float], ...]:
        """The adapters and their scales, as the engine applies them."""
        return tuple((lora.name, lora.scale) for lora in self.loras)

    def adapter_set(self) -> str:
        """The adapters this request needs loaded, as one id (Serve's multiplexed model id): "" for
        none. Scales are not in it: they change nothing that must be loaded."""
        return "+".join(sorted(lora.name for lora in self.loras))

    @model_validator(mode="after")
    def _check_combinations(self) -> "SDXLRequest":
        self._check_image_inputs()
        self._check_workflow_options()
        self._check_prompt_sources()
        self._check_list_lengths()
        self._check_embedding_shapes()
        pixels = self.height * self.width * self.image_count
        if pixels > _LIMITS.max_pixels:
            raise InvalidRequest(
                f"height × width × images = {pixels} pixels exceeds the budget of {_LIMITS.max_pixels}",
                param="num_images_per_prompt" if self.image_count > 1 else "height",
            )
        if self.latents is not None and (self.latents.ndim != 4 or self.latents.shape[0] != self.image_count):
            raise InvalidRequest(
                f"latents must have shape ({self.image_count}, channels, height/8, width/8), "
                f"got {tuple(self.latents.shape)}",
                param="latents",
            )
        return self

    def _check_image_inputs(self) -> None:
        """img2img and inpainting: the image sets the size (as diffusers' image processor rounds it),
        the mask must match it, and the steps kept by strength must be at least one."""
        for name in ("strength", "mask_image"):
            if getattr(self, name) is not None and self.image is None:
                raise InvalidRequest(f"{name} acts only with an image (img2img, inpainting)", param=name)
        if self.image is None:
            return
        width, height = (side - side % 8 for side in self.image.size)
        if min(width, height) < _LIMITS.min_size:
            raise InvalidRequest(
                f"image is {self.image.width}×{self.image.height} pixels; each side must be at least "
                f"{_LIMITS.min_size}",
                param="image",
            )
        for name, side in (("height", height), ("width", width)):
            if name in self.model_fields_set and getattr(self, name) != side:
                raise InvalidRequest(
                    f"{name} must be the image's {side} (its size rounded down to a multiple of 8), "
                    f"or absent; got {getattr(self, name)}",
                    param=name,
                )
        self.height, self.width = height, width
        if self.mask_image is not None and self.mask_image.size != self.image.size:
            raise InvalidRequest(
                f"mask_image is {self.mask_image.width}×{self.mask_image.height} pixels but image is "
                f"{self.image.width}×{self.image.height}; they must be the same size",
                param="mask_image",
            )
        if self.latents is not None:
            raise InvalidRequest("give latents or an image to start from, not both", param="latents")
        if int(self.num_inference_steps * self.effective_strength()) < 1:
            raise InvalidRequest(
                f"strength × num_inference_steps must keep at least one step; "
                f"{self.effective_strength()} × {self.num_inference_steps} keeps none",
                param="num_inference_steps" if self.strength is None else "strength",
            )

    def _check_workflow_options(self) -> None:
        names = [lora.name for lora in self.loras]
        if len(set(names)) != len(names):
            raise InvalidRequest("each adapter may be named once in loras", param="loras")
        if not self.wants_refiner:
            return
        if self.prompt_embeds is not None or self.negative_prompt_embeds is not None:
            raise InvalidRequest(
                "the refiner encodes text with its own encoder: give prompts as text, not embeddings",
                param="refiner",
            )
        if self.denoising_end == 1.0:
            raise InvalidRequest(
                "with a refiner the base must stop before the end: denoising_end below 1, or absent",
                param="denoising_end",
            )
        if self.denoising_end is None:  # one hand-off point for both, as diffusers' ensemble uses
            self.denoising_end = self.refiner.denoising_start or DEFAULT_HAND_OFF

    def _check_prompt_sources(self) -> None:
        if self.prompt is None and self.prompt_embeds is None:
            raise InvalidRequest(
                "prompt is required (or prompt_embeds with pooled_prompt_embeds)", param="prompt"
            )
        pairs = [
            ("prompt_embeds", "prompt"),
            ("prompt_embeds", "prompt_2"),
            ("negative_prompt_embeds", "negative_prompt"),
            ("negative_prompt_embeds", "negative_prompt_2"),
        ]
        for embeds, text in pairs:
            if getattr(self, embeds) is not None and getattr(self, text) is not None:
                raise InvalidRequest(f"give {text} or {embeds}, not both", param=embeds)
        for embeds, pooled in [
            ("prompt_embeds", "pooled_prompt_embeds"),
            ("negative_prompt_embeds", "negative_pooled_prompt_embeds"),
        ]:
            if getattr(self, embeds) is not None and getattr(self, pooled) is None:
                raise InvalidRequest(f"{pooled} is required with {embeds}", param=pooled)

    def _check_list_lengths(self) -> None:
        count = self.prompt_count
        for name in ("prompt_2", "negative_prompt", "negative_prompt_2"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != count:
                raise InvalidRequest(
                    f"{name} has {len(value)} entries but there are {count} prompts", param=name
                )

    def _check_embedding_shapes(self) -> None:
        count = self.prompt_count
        for name, ndim in [
            ("prompt_embeds", 3),
            ("negative_prompt_embeds", 3),
            ("pooled_prompt_embeds", 2),
            ("negative_pooled_prompt_embeds", 2),
        ]:
            tensor = getattr(self, name)
            if tensor is not None and (tensor.ndim != ndim or tensor.shape[0] != count or 0 in tensor.shape):
                raise InvalidRequest(
                    f"{name} must have {ndim} non-empty dimensions, the first of size {count} "
                    "(one per prompt); "
                    f"got {tuple(tensor.shape)}",
                    param=name,
                )
        embeds, negative = self.prompt_embeds, self.negative_prompt_embeds
        if embeds is not None and negative is not None and embeds.shape != negative.shape:
            raise InvalidRequest(
                f"negative_prompt_embeds must have the shape of prompt_embeds {tuple(embeds.shape)}, "
                f"got {tuple(negative.shape)}",
                param="negative_prompt_embeds",
            )

    def check_against(self, spec: SDXLModelSpec) -> None:
        """Raises InvalidRequest, naming the field, for tensors the loaded model would reject and for
        what the graph does not offer (a refiner, an adapter)."""
        if self.wants_refiner and not spec.refiner:
            raise InvalidRequest("this service has no refiner deployed", param="refiner")
        unknown = [lora.name for lora in self.loras if lora.name not in spec.loras]
        if unknown:
            offered = ", ".join(spec.loras) or "none"
            raise InvalidRequest(f"no LoRA adapter named {unknown[0]!r}; offered: {offered}", param="loras")
        if self.latents is not None:
            expected = (
                self.image_count,
                spec.latent_channels,
                self.height // spec.vae_scale_factor,
                self.width // spec.vae_scale_factor,
            )
            if tuple(self.latents.shape) != expected:
                raise InvalidRequest(
                    f"latents must have shape {expected} for this model and size, "
                    f"got {tuple(self.latents.shape)}",
                    param="latents",
                )
        widths = {
            "prompt_embeds": spec.text_embed_width,
            "negative_prompt_embeds": spec.text_embed_width,
            "pooled_prompt_embeds": spec.pooled_embed_width,
            "negative_pooled_prompt_embeds": spec.pooled_embed_width,
        }
        for name, width in widths.items():
            tensor = getattr(self, name)
            if tensor is not None and tensor.shape[-1] != width:
                raise InvalidRequest(
                    f"{name} must be {width} wide for this model, got {tensor.shape[-1]}", param=name
                )
        # Text is always encoded to the tokenizers' length; the other side of guidance must match it.
        if self.prompt_embeds is None and self.negative_prompt_embeds is not None:
            if self.negative_prompt_embeds.shape[1] != spec.text_tokens:
                raise InvalidRequest(
                    f"negative_prompt_embeds must have {spec.text_tokens} tokens to pair with a text prompt",
                    param="negative_prompt_embeds",
                )
        if self.prompt_embeds is not None and self.prompt_embeds.shape[1] > spec.text_tokens:
            if self.negative_prompt is not None:
                raise InvalidRequest(
                    f"prompt_embeds longer than {spec.text_tokens} tokens need negative_prompt_embeds, "
                    "not a negative_prompt text",
                    param="negative_prompt",
                )

    def to_pipeline_kwargs(self) -> dict[str, Any]:
        """Arguments for `StableDiffusionXLPipeline.__call__` (all but generator and the callback).
        A single negative or secondary prompt is repeated for every prompt of a list, which diffusers
        itself would refuse for prompt_2."""
        kwargs: dict[str, Any] = {name: getattr(self, name) for name in PROMPT_PARAMETERS}
        kwargs.update(self.call_kwargs(), num_images_per_prompt=self.num_images_per_prompt)
        if isinstance(self.prompt, list):
            for name in ("prompt_2", "negative_prompt", "negative_prompt_2"):
                if isinstance(kwargs[name], str):
                    kwargs[name] = [kwargs[name]] * len(self.prompt)
        return kwargs

    def refiner_kwargs(self) -> dict[str, Any]:
        """Arguments for the refiner's `StableDiffusionXLImg2ImgPipeline.__call__` that every image of
        the request shares (not the texts, the latents or the generators)."""
        options = self.refiner or RefinerOptions()
        shared = {name: getattr(self, name) for name in CALL_PARAMETERS if name not in _BASE_ONLY}
        return shared | {
            "num_inference_steps": options.num_inference_steps or self.num_inference_steps,
            "denoising_start": options.denoising_start or self.denoising_end,
            "aesthetic_score": options.aesthetic_score,
            "negative_aesthetic_score": options.negative_aesthetic_score,
            "guidance_scale": self.guidance_scale,
        }

    def prompt_texts(self) -> dict[str, list[str] | None] | None:
        """The texts the text encoders read, one entry per prompt, as the pipeline resolves them
        (prompt_2 defaults to prompt, negative_prompt_2 to negative_prompt); None when the request
        brings embeddings instead."""
        if any(getattr(self, name) is not None for name in PROMPT_PARAMETERS if name.endswith("_embeds")):
            return None
        kwargs = self.to_pipeline_kwargs()
        texts = {
            name: kwargs[name] for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
        }
        texts = {name: [text] if isinstance(text, str) else text for name, text in texts.items()}
        texts["prompt_2"] = texts["prompt_2"] or texts["prompt"]
        texts["negative_prompt_2"] = texts["negative_prompt_2"] or texts["negative_prompt"]
        return texts

    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline arguments that requests sharing one pipeline call must agree on."""
        return {name: getattr(self, name) for name in CALL_PARAMETERS}

    def guidance_is_on(self) -> bool:
        return self.guidance_scale > 1.0

    def micro_conditioning(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...] | None]:
        """SDXL's added time ids as the pipeline resolves them: (original size, crop, target size),
        sizes defaulting to the image's; and the negative ones, or None when they do not act (diffusers
        uses them only when both negative sizes are given)."""
        size = (self.height, self.width)
        positive = (self.original_size or size, self.crops_coords_top_left, self.target_size or size)
        if self.negative_original_size is None or self.negative_target_size is None:
            return positive, None
        negative = (
            self.negative_original_size,
            self.negative_crops_coords_top_left,
            self.negative_target_size,
        )
        return positive, negative

    def split(self, max_images: int) -> list["SDXLRequest"]:
        """This request as requests of at most `max_images` images each, in image order, that make
        the same images: each takes one prompt's rows (text, embeddings, latents) and image j's seed."""
        if self.image_count <= max_images:
            return [self]
        per_prompt, seed = self.num_images_per_prompt, self.seed
        return [
            self._part(prompt, first, min(max_images, per_prompt - first), seed)
            for prompt in range(self.prompt_count)
            for first in range(0, per_prompt, max_images)
        ]

    def _part(self, prompt: int, first: int, images: int, seed: int | None) -> "SDXLRequest":
        image = prompt * self.num_images_per_prompt + first
        update: dict[str, Any] = {
            "num_images_per_prompt": images,
            "seed": None if seed is None else offset_seed(seed, image),
        }
        for name in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
            if isinstance(value := getattr(self, name), list):
                update[name] = [value[prompt]]
        for name in (
            "prompt_embeds",
            "negative_prompt_embeds",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        ):
            if (tensor := getattr(self, name)) is not None:
                update[name] = tensor[prompt : prompt + 1]
        if self.latents is not None:
            update["latents"] = self.latents[image : image + images]
        part = self.model_copy(update=update)
        if self.workflow == "inpaint" and image > 0 and self._image_encoding_seed is None:
            part._image_encoding_seed = seed  # a part of a part keeps the whole request's
        return part

    @property
    def image_encoding_seed(self) -> int | None:
        """For a part of a split inpainting request without its image 0: that image's seed. diffusers
        draws the image's VAE sample from image 0's generator alone, so the part must too."""
        return self._image_encoding_seed


@dataclass
class RefineRequest:
    """What the SDXL deployment sends the refiner deployment, through a handle (Ray's object store):
    a request's latents where the base stopped, with the state of its generators."""

    request: SDXLRequest
    latents: torch.Tensor  # (images, channels, height/8, width/8), the base's, not decoded
    generator_states: list[torch.Tensor]
    seeds: list[int]
    timings: dict[str, float]  # the base stage's

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    def split(self, max_images: int) -> list["RefineRequest"]:
        """This hand-off as hand-offs of at most `max_images` images each, in image order."""
        parts, start = [], 0
        for part in self.request.split(max_images):
            rows = slice(start, start + part.image_count)
            states = self.generator_states[rows]
            parts.append(RefineRequest(part, self.latents[rows], states, self.seeds[rows], self.timings))
            start += part.image_count
        return parts


def seeds_for(request: SDXLRequest, seed: int) -> list[int]:
    """The seed of each image of a request: image j gets seed + j (wrapping past MAX_SEED to 0)."""
    return [offset_seed(seed, index) for index in range(request.image_count)]


@dataclass
class SDXLOutput:
    """What the SDXL deployment returns: encoded images, one seed each."""

    images: list[bytes]
    format: str
    seeds: list[int]
    timings: dict[str, float]
    batch_size: int

    @classmethod
    def join(cls, parts: list["SDXLOutput"]) -> "SDXLOutput":
        """The output of a request run as parts (`SDXLRequest.split`), in order."""
        return cls(
            images=[image for part in parts for image in part.images],
            format=parts[0].format,
            seeds=[seed for part in parts for seed in part.seeds],
            timings={name: max(part.timings.get(name, 0.0) for part in parts) for name in parts[0].timings},
            batch_size=max(part.batch_size for part in parts),
        )


def sdxl_response(output: SDXLOutput) -> SDXLResponse:
    """The JSON answer of /v1/sdxl for a model's output."""
    return SDXLResponse(
        images=[
            SDXLImage(data=base64.b64encode(data).decode(), format=output.format, seed=seed)
            for data, seed in zip(output.images, output.seeds, strict=True)
        ],
        timings=output.timings,
        batch_size=output.batch_size,
    )
