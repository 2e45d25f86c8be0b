"""The rules of an SDXL request that join fields (run by its validator, `check_combinations`), and
its checks against the loaded model (`check_against`, with what the model accepts: `SDXLModelSpec`).
Each raises InvalidRequest naming the field at fault."""

from dataclasses import dataclass

from leap_ray.api.images import PendingImage
from leap_ray.api.sdxl_fields import EMBEDDING_FIELDS, INPAINT_GUIDANCE_SCALE, TEXT_FIELDS, SDXLFields
from leap_ray.api.sdxl_workflows import DEFAULT_HAND_OFF
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest

_LIMITS = LIMITS.sdxl


@dataclass(frozen=True)
class SDXLModelSpec:
    """What a loaded model accepts, for checks that depend on it (tensor shapes), what the graph
    around it offers (a refiner, LoRA adapters), and the sizes and steps it suits."""

    latent_channels: int
    vae_scale_factor: int
    text_embed_width: int
    pooled_embed_width: int
    text_tokens: int
    refiner: bool | None = None  # None: not known here (an engine alone hands its latents back)
    loras: tuple[str, ...] = ()
    # What a client may start from (the playground's defaults, GET /v1/sdxl/defaults); None: unknown,
    # the request's own defaults then.
    native_size: int | None = None  # the side it was trained at: UNet sample size × VAE scale factor
    suggested_steps: int | None = None  # denoising steps worth waiting for (few for a tiny model)


def check_combinations(request: SDXLFields) -> None:
    """The rules between fields, in the order a client's first error is reported: first every rule
    that needs no pixels, then (the uploaded images decoded, once) those that compare the image's size.
    Sets what they settle: the workflow's default guidance, the size of an uploaded image, and the
    base's hand-off point to the refiner."""
    _check_image_fields(request)
    _check_workflow_options(request)
    _check_prompt_sources(request)
    _check_list_lengths(request)
    _check_embedding_shapes(request)
    _check_pixel_budget(request)
    latents = request.latents
    if latents is not None and (latents.ndim != 4 or latents.shape[0] != request.image_count):
        raise InvalidRequest(
            f"latents must have shape ({request.image_count}, channels, height/8, width/8), "
            f"got {tuple(latents.shape)}",
            param="latents",
        )
    _decode_uploads(request)
    if request.workflow == "inpaint" and "guidance_scale" not in request.model_fields_set:
        request.guidance_scale = INPAINT_GUIDANCE_SCALE  # diffusers' inpainting pipeline's default
    _check_image_size(request)
    _check_kept_steps(request)  # again: OpenAI's transparency rule may have found no mask


def _check_image_fields(request: SDXLFields) -> None:
    """img2img and inpainting, before any pixel: what needs an image has one, an image is not given
    with latents, and the steps kept by strength are at least one."""
    for name in ("strength", "mask_image"):
        if getattr(request, name) is not None and request.image is None:
            raise InvalidRequest(f"{name} acts only with an image (img2img, inpainting)", param=name)
    if request.image is not None and request.latents is not None:
        raise InvalidRequest("give latents or an image to start from, not both", param="latents")
    _check_kept_steps(request)


def _check_kept_steps(request: SDXLFields) -> None:
    if request.image is None:
        return
    strength, steps = request.effective_strength(), request.num_inference_steps
    if int(steps * strength) < 1:
        raise InvalidRequest(
            f"strength × num_inference_steps must keep at least one step; {strength} × {steps} keeps none",
            param="num_inference_steps" if request.strength is None else "strength",
        )


def _check_pixel_budget(request: SDXLFields) -> None:
    """height × width × images within the budget; an uploaded image's size from its header (EXIF
    turns an image by quarter turns, which keep its area)."""
    height, width = request.height, request.width
    if request.image is not None:
        width, height = (side - side % 8 for side in request.image.size)
    pixels = height * width * request.image_count
    if pixels > _LIMITS.max_pixels:
        raise InvalidRequest(
            f"height × width × images = {pixels} pixels exceeds the budget of {_LIMITS.max_pixels}",
            param="num_images_per_prompt" if request.image_count > 1 else "height",
        )


# How the pipelines read each uploaded image: the image in colour (diffusers' load_image), the mask in grey.
UPLOAD_MODES = {"image": "RGB", "mask_image": "L"}


def _decode_uploads(request: SDXLFields) -> None:
    """The one decode of the uploaded images (opened by their fields' validation)."""
    for name, mode in UPLOAD_MODES.items():
        value = getattr(request, name)
        if isinstance(value, PendingImage):
            try:
                setattr(request, name, value.decode(mode))
            except ValueError as error:
                raise InvalidRequest(f"{name}: {error}", param=name) from None


def _check_image_size(request: SDXLFields) -> None:
    """The image sets the size (as diffusers' image processor rounds it); the mask must match it."""
    image = request.image
    if image is None:
        return
    width, height = (side - side % 8 for side in image.size)
    if min(width, height) < _LIMITS.min_size:
        raise InvalidRequest(
            f"image is {image.width}×{image.height} pixels; each side must be at least {_LIMITS.min_size}",
            param="image",
        )
    for name, side in (("height", height), ("width", width)):
        if name in request.model_fields_set and getattr(request, name) != side:
            raise InvalidRequest(
                f"{name} must be the image's {side} (its size rounded down to a multiple of 8), "
                f"or absent; got {getattr(request, name)}",
                param=name,
            )
    request.height, request.width = height, width
    mask = request.mask_image
    if mask is not None and mask.size != image.size:
        raise InvalidRequest(
            f"mask_image is {mask.width}×{mask.height} pixels but image is "
            f"{image.width}×{image.height}; they must be the same size",
            param="mask_image",
        )


def _check_workflow_options(request: SDXLFields) -> None:
    names = [lora.name for lora in request.loras]
    if len(set(names)) != len(names):
        raise InvalidRequest("each adapter may be named once in loras", param="loras")
    if not request.wants_refiner:
        return
    # The per-token embeddings are those that stand for texts.
    if any(getattr(request, name) is not None for name, field in EMBEDDING_FIELDS.items() if field.replaces):
        raise InvalidRequest(
            "the refiner encodes text with its own encoder: give prompts as text, not embeddings",
            param="refiner",
        )
    if request.denoising_end == 1.0:
        raise InvalidRequest(
            "with a refiner the base must stop before the end: denoising_end below 1, or absent",
            param="denoising_end",
        )
    if request.denoising_end is None:  # one hand-off point for both, as diffusers' ensemble uses
        request.denoising_end = request.refiner.denoising_start or DEFAULT_HAND_OFF


def _check_prompt_sources(request: SDXLFields) -> None:
    if request.prompt is None and request.prompt_embeds is None:
        raise InvalidRequest(
            "prompt is required (or prompt_embeds with pooled_prompt_embeds)", param="prompt"
        )
    for name, field in EMBEDDING_FIELDS.items():
        for text in field.replaces:
            if getattr(request, name) is not None and getattr(request, text) is not None:
                raise InvalidRequest(f"give {text} or {name}, not both", param=name)
    for name, field in EMBEDDING_FIELDS.items():
        if field.pooled and getattr(request, name) is not None and getattr(request, field.pooled) is None:
            raise InvalidRequest(f"{field.pooled} is required with {name}", param=field.pooled)


def _check_list_lengths(request: SDXLFields) -> None:
    count = request.prompt_count
    for name in TEXT_FIELDS:
        value = getattr(request, name)
        if isinstance(value, list) and len(value) != count:
            raise InvalidRequest(f"{name} has {len(value)} entries but there are {count} prompts", param=name)


def _check_embedding_shapes(request: SDXLFields) -> None:
    count = request.prompt_count
    for name, field in EMBEDDING_FIELDS.items():
        tensor = getattr(request, name)
        if tensor is not None and (
            tensor.ndim != field.ndim or tensor.shape[0] != count or 0 in tensor.shape
        ):
            raise InvalidRequest(
                f"{name} must have {field.ndim} non-empty dimensions, the first of size {count} "
                f"(one per prompt); got {tuple(tensor.shape)}",
                param=name,
            )
    embeds, negative = request.prompt_embeds, request.negative_prompt_embeds
    if embeds is not None and negative is not None and embeds.shape != negative.shape:
        raise InvalidRequest(
            f"negative_prompt_embeds must have the shape of prompt_embeds {tuple(embeds.shape)}, "
            f"got {tuple(negative.shape)}",
            param="negative_prompt_embeds",
        )


def check_against(request: SDXLFields, spec: SDXLModelSpec) -> None:
    """Raises InvalidRequest, naming the field, for tensors the loaded model would reject and for
    what the graph does not offer (a refiner, an adapter)."""
    if request.wants_refiner and spec.refiner is False:
        raise InvalidRequest("this service has no refiner deployed", param="refiner")
    unknown = [lora.name for lora in request.loras if lora.name not in spec.loras]
    if unknown:
        offered = ", ".join(spec.loras) or "none"
        raise InvalidRequest(f"no LoRA adapter named {unknown[0]!r}; offered: {offered}", param="loras")
    if request.latents is not None:
        expected = (
            request.image_count,
            spec.latent_channels,
            request.height // spec.vae_scale_factor,
            request.width // spec.vae_scale_factor,
        )
        if tuple(request.latents.shape) != expected:
            raise InvalidRequest(
                f"latents must have shape {expected} for this model and size, "
                f"got {tuple(request.latents.shape)}",
                param="latents",
            )
    for name, field in EMBEDDING_FIELDS.items():
        tensor, width = getattr(request, name), getattr(spec, field.width)
        if tensor is not None and tensor.shape[-1] != width:
            raise InvalidRequest(
                f"{name} must be {width} wide for this model, got {tensor.shape[-1]}", param=name
            )
    _check_token_counts(request, spec)


def _check_token_counts(request: SDXLFields, spec: SDXLModelSpec) -> None:
    # Text is always encoded to the tokenizers' length; the other side of guidance must match it.
    embeds, negative = request.prompt_embeds, request.negative_prompt_embeds
    if embeds is None and negative is not None and negative.shape[1] != spec.text_tokens:
        raise InvalidRequest(
            f"negative_prompt_embeds must have {spec.text_tokens} tokens to pair with a text prompt",
            param="negative_prompt_embeds",
        )
    if embeds is not None and embeds.shape[1] > spec.text_tokens and request.negative_prompt is not None:
        raise InvalidRequest(
            f"prompt_embeds longer than {spec.text_tokens} tokens need negative_prompt_embeds, "
            "not a negative_prompt text",
            param="negative_prompt",
        )
