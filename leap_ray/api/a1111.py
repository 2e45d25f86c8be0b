"""The AUTOMATIC1111 web UI API (`/sdapi/v1/txt2img`, `/sdapi/v1/img2img`), as its clients send it
(`webuiapi`, the workflow tools built on it), translated into an SDXL request: one validation
(SDXLRequest's), one error shape, `param` named as A1111 names the field.

Every field A1111 1.10 accepts is accepted (others: 422, unknown field). A field is either mapped
onto ours (prompt, seed, steps, cfg_scale, sizes, sampler, batch, init image and mask, strength,
`<lora:name:scale>` tags), honoured here (resize_mode 0 and 1, the mask's blur and inversion,
send_images), or inert: accepted at the values that change nothing (A1111's and webuiapi's defaults
and their "off"), refused with a 422 naming it otherwise (`INERT`)."""

import io
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from PIL import Image, ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator

from leap_ray.api.images import PendingImage, UploadedImage
from leap_ray.api.infotext import SAMPLER_NAMES
from leap_ray.api.marks import PARAMETERS_KEY, read_marks
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.api.sdxl_workflows import open_upload
from leap_ray.errors import InvalidRequest, LeapRayError, name_field

MODEL_TITLE = "sdxl"  # the one checkpoint /sdapi/v1/sd-models lists


class Sampler(NamedTuple):
    """An A1111 sampler we run: its name, its aliases, and our `scheduler`."""

    name: str
    aliases: tuple[str, ...]
    scheduler: str


# Our schedulers, by their A1111 names (`SAMPLER_NAMES`, as infotexts write them) and its aliases.
_ALIASES = {
    "euler_ancestral": ("k_euler_a", "k_euler_ancestral"),
    "euler": ("k_euler",),
    "dpmpp_2m": ("k_dpmpp_2m",),
    "ddim": ("ddim",),
}
SAMPLERS = tuple(Sampler(SAMPLER_NAMES[ours], aliases, ours) for ours, aliases in _ALIASES.items())
SAMPLERS_BY_NAME = {name.lower(): s for s in SAMPLERS for name in (s.name, *s.aliases)}
# A1111's schedule types ("scheduler"): only its "Automatic", the sampler's own, which is ours too.
SCHEDULE_TYPES = ("automatic", "Automatic")
OPTIONS: dict[str, Any] = {  # what GET /sdapi/v1/options reports; POST may only set these values
    "sd_model_checkpoint": MODEL_TITLE,
    "sd_checkpoint_hash": None,
    "samples_format": "png",
    "CLIP_stop_at_last_layers": 1,
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "s_churn": 0.0,
    "s_noise": 1.0,
    "s_min_uncond": 0.0,
}
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?>")


def options_error(options: dict[str, Any]) -> InvalidRequest | None:
    """The first option that would change something (refused naming it), or None: the checkpoint can
    only be ours, and other options only the values we run with."""
    for key, value in options.items():
        if key not in OPTIONS or OPTIONS[key] != value:
            return InvalidRequest(
                f"{key}: this service runs with {key} = {OPTIONS.get(key)!r} and cannot change it",
                param=str(key),
            )
    return None


def _none_or(*values: object) -> Callable[[Any], bool]:
    return lambda value: value is None or value in values


def _not_positive(value: int | None) -> bool:
    return value is None or value <= 0


def _no_change(settings: dict[str, Any] | None) -> bool:
    return not settings or options_error(settings) is None


# The inert fields: which values change nothing here, and why others cannot be honoured.
INERT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "enable_hr": (_none_or(False), "hires fix is not offered"),
    "firstphase_width": (_none_or(0), "hires fix's first-pass size is not offered"),
    "firstphase_height": (_none_or(0), "hires fix's first-pass size is not offered"),
    "styles": (_none_or([]), "prompt styles are not offered"),
    "subseed_strength": (_none_or(0), "variation seeds are not offered"),
    "seed_resize_from_h": (_not_positive, "resizing seeds is not offered"),
    "seed_resize_from_w": (_not_positive, "resizing seeds is not offered"),
    "restore_faces": (_none_or(False), "face restoration is not offered"),
    "tiling": (_none_or(False), "tiling is not offered"),
    "s_min_uncond": (_none_or(0), "negative guidance minimum sigma is not offered"),
    "s_churn": (_none_or(0), "sigma churn is not offered"),
    "s_noise": (_none_or(1), "the sampler's noise multiplier is 1 here"),
    "override_settings": (_no_change, "settings other than ours cannot be set"),
    "refiner_checkpoint": (_none_or("", "None"), "A1111's refiner is not offered"),
    "firstpass_image": (_none_or(""), "a first-pass image is not offered"),
    "script_name": (_none_or("", "None"), "scripts are not offered"),
    "alwayson_scripts": (_none_or({}), "scripts (extensions) are not offered"),
    "infotext": (_none_or(""), "parameters from an infotext are not offered"),
    "initial_noise_multiplier": (_none_or(1), "the initial noise multiplier is 1 here"),
    "latent_mask": (_none_or(""), "a separate latent mask is not offered"),
}


class A1111Fields(BaseModel):
    """The fields txt2img and img2img share, as A1111 1.10 declares them (every one may be null)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field("", description="The prompt; `<lora:NAME:SCALE>` tags apply our adapters.")
    negative_prompt: str | None = Field("", description="The negative prompt; empty: none.")
    styles: list[str] | None = Field(None, description="Prompt styles: none are offered (empty only).")
    seed: int | None = Field(-1, description="Seed of the first image, the next ones +1 each; -1: random.")
    subseed: int | None = Field(-1, description="Variation seed: inert without subseed_strength.")
    subseed_strength: float | None = Field(0, description="Variation strength: 0 only.")
    seed_resize_from_h: int | None = Field(-1, description="Seed resize: 0 or below only.")
    seed_resize_from_w: int | None = Field(-1, description="Seed resize: 0 or below only.")
    sampler_name: str | None = Field(None, description="The sampler: Euler a, Euler, DPM++ 2M, DDIM.")
    sampler_index: str | None = Field("Euler", description="The sampler when sampler_name is absent.")
    scheduler: str | None = Field(None, description="Schedule type: automatic only (the sampler's own).")
    batch_size: int | None = Field(1, ge=1, description="Images per batch.")
    n_iter: int | None = Field(1, ge=1, description="Batches; images in all: batch_size × n_iter.")
    steps: int | None = Field(50, description="Denoising steps.")
    cfg_scale: float | None = Field(7.0, description="Classifier-free guidance scale.")
    width: int | None = Field(512, description="Width in pixels, a multiple of 8.")
    height: int | None = Field(512, description="Height in pixels, a multiple of 8.")
    restore_faces: bool | None = Field(None, description="Face restoration: not offered (false only).")
    tiling: bool | None = Field(None, description="Tiling: not offered (false only).")
    do_not_save_samples: bool | None = Field(False, description="Nothing is saved here; accepted.")
    do_not_save_grid: bool | None = Field(False, description="Nothing is saved here; accepted.")
    eta: float | None = Field(None, description="DDIM's eta; for Euler a, 1 only; others ignore it.")
    s_min_uncond: float | None = Field(None, description="0 only.")
    s_churn: float | None = Field(None, description="Sigma churn: 0 only.")
    s_tmax: float | None = Field(None, description="Inert without s_churn; accepted.")
    s_tmin: float | None = Field(None, description="Inert without s_churn; accepted.")
    s_noise: float | None = Field(None, description="The sampler's noise multiplier: 1 only.")
    override_settings: dict[str, Any] | None = Field(None, description="Only the options we run with.")
    override_settings_restore_afterwards: bool | None = Field(True, description="Accepted.")
    refiner_checkpoint: str | None = Field(None, description="A1111's refiner: not offered (empty only).")
    refiner_switch_at: float | None = Field(None, description="Inert without refiner_checkpoint.")
    disable_extra_networks: bool | None = Field(False, description="True: `<lora:...>` tags are dropped.")
    firstpass_image: str | None = Field(None, description="Not offered (empty only).")
    comments: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    script_name: str | None = Field(None, description="Scripts: none are offered (empty only).")
    script_args: list[Any] | None = Field(None, description="Inert without script_name; accepted.")
    send_images: bool | None = Field(True, description="False: the answer holds no images.")
    save_images: bool | None = Field(False, description="Nothing is saved here; accepted.")
    alwayson_scripts: dict[str, Any] | None = Field(None, description="Extensions: none (empty only).")
    force_task_id: str | None = Field(None, description="Accepted and ignored.")
    infotext: str | None = Field(None, description="Parameters from an infotext: not offered (empty only).")

    @model_validator(mode="after")
    def _refuse_what_cannot_be_honoured(self) -> "A1111Fields":
        for name, (inert, reason) in INERT.items():
            if name in type(self).model_fields and not inert(getattr(self, name)):
                raise InvalidRequest(f"{name}: {reason}", param=name)
        sampler = self.sampler()
        if sampler.scheduler == "euler_ancestral" and self.eta not in (None, 1):
            raise InvalidRequest("eta: Euler a runs with eta 1 here", param="eta")
        if self.scheduler not in (None, "", *SCHEDULE_TYPES):
            raise InvalidRequest(
                f"scheduler: only {SCHEDULE_TYPES[0]} (the sampler's own schedule) is offered",
                param="scheduler",
            )
        return self

    def sampler(self) -> Sampler:
        """The sampler named (sampler_name, else sampler_index, as A1111 reads them)."""
        param = "sampler_name" if self.sampler_name else "sampler_index"
        name = self.sampler_name or self.sampler_index or "Euler"
        if (sampler := SAMPLERS_BY_NAME.get(name.lower())) is None:
            offered = ", ".join(s.name for s in SAMPLERS)
            raise InvalidRequest(f"{param}: unknown sampler {name!r}; offered: {offered}", param=param)
        return sampler

    @property
    def image_count(self) -> int:
        return (self.batch_size or 1) * (self.n_iter or 1)

    def sdxl_input(self) -> dict[str, Any]:
        """The SDXL request's fields: A1111's mapped onto ours (images opened, not decoded)."""
        prompt, loras = lora_tags(self.prompt or "")
        sampler = self.sampler()
        data: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": self.negative_prompt or None,  # empty: zeros, as A1111 does for SDXL
            "seed": None if self.seed in (None, -1) else self.seed,
            "num_inference_steps": 50 if self.steps is None else self.steps,
            "guidance_scale": 7.0 if self.cfg_scale is None else self.cfg_scale,
            "width": 512 if self.width is None else self.width,
            "height": 512 if self.height is None else self.height,
            "num_images_per_prompt": self.image_count,
            "scheduler": sampler.scheduler,
            "loras": [] if self.disable_extra_networks else loras,
        }
        if sampler.scheduler == "ddim" and self.eta is not None:
            data["eta"] = self.eta
        return data

    def parameters(self) -> dict[str, Any]:
        """The answer's `parameters`: the request as sent (A1111 answers its request's fields)."""
        return self.model_dump(mode="json")


def lora_tags(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """The prompt without its `<lora:NAME>` / `<lora:NAME:SCALE>` tags, and those adapters."""
    loras = []
    for name, scale in _LORA_TAG.findall(prompt):
        try:
            value = float(scale) if scale else 1.0
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            message = f"prompt: <lora:{name}:{scale}> has no finite number for a scale"
            raise InvalidRequest(message, param="prompt")
        loras.append({"name": name, "scale": value})
    return _LORA_TAG.sub("", prompt), loras


class A1111Txt2ImgRequest(A1111Fields):
    """POST /sdapi/v1/txt2img."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "a lighthouse at dawn", "steps": 4, "width": 64, "height": 64, "seed": 1}]
        },
    )

    enable_hr: bool | None = Field(False, description="Hires fix: not offered (false only).")
    denoising_strength: float | None = Field(0.75, description="Hires fix's strength: inert, accepted.")
    firstphase_width: int | None = Field(0, description="Hires fix: 0 only.")
    firstphase_height: int | None = Field(0, description="Hires fix: 0 only.")
    hr_scale: float | None = Field(2.0, description="Hires fix: inert, accepted.")
    hr_upscaler: str | None = Field(None, description="Hires fix: inert, accepted.")
    hr_second_pass_steps: int | None = Field(0, description="Hires fix: inert, accepted.")
    hr_resize_x: int | None = Field(0, description="Hires fix: inert, accepted.")
    hr_resize_y: int | None = Field(0, description="Hires fix: inert, accepted.")
    hr_checkpoint_name: str | None = Field(None, description="Hires fix: inert, accepted.")
    hr_sampler_name: str | None = Field(None, description="Hires fix: inert, accepted.")
    hr_scheduler: str | None = Field(None, description="Hires fix: inert, accepted.")
    hr_prompt: str | None = Field("", description="Hires fix: inert, accepted.")
    hr_negative_prompt: str | None = Field("", description="Hires fix: inert, accepted.")


class A1111Img2ImgRequest(A1111Fields):
    """POST /sdapi/v1/img2img: img2img, or inpainting with `mask` (white repainted). The image (and
    mask) is resized to width × height as A1111 does (resize_mode 0: stretched, 1: cropped, centred)."""

    init_images: list[str] | None = Field(None, description="One image: base64 or a data: URI.")
    resize_mode: int | None = Field(
        0, description="0: just resize; 1: crop and resize; 2, 3: same size only."
    )
    denoising_strength: float | None = Field(0.75, description="How much of the image to repaint, (0, 1].")
    image_cfg_scale: float | None = Field(None, description="For instruct-pix2pix models only; ignored.")
    mask: str | None = Field(None, description="Inpainting mask (base64): white (or opaque) repainted.")
    mask_blur_x: int | None = Field(4, ge=0, le=256, description="The mask's horizontal blur.")
    mask_blur_y: int | None = Field(4, ge=0, le=256, description="The mask's vertical blur.")
    mask_blur: int | None = Field(None, ge=0, le=256, description="Both blurs at once.")
    inpainting_fill: int | None = Field(0, description="Masked content: 1 (original) only, with a mask.")
    inpaint_full_res: bool | None = Field(True, description="With a mask: false only (whole picture).")
    inpaint_full_res_padding: int | None = Field(0, description="Inert (only-masked is not offered).")
    inpainting_mask_invert: int | None = Field(0, description="1: repaint the mask's black instead.")
    initial_noise_multiplier: float | None = Field(None, description="1 only.")
    latent_mask: str | None = Field(None, description="Not offered (empty only).")
    include_init_images: bool | None = Field(False, description="Echo init_images and mask in parameters.")

    def sdxl_input(self) -> dict[str, Any]:
        """The SDXL request of an img2img: its image and mask opened (not decoded), to be resized."""
        if not self.init_images or len(self.init_images) != 1:
            raise InvalidRequest("init_images: give exactly one image", param="init_images")
        data = super().sdxl_input()
        size = (data["width"], data["height"])
        image = open_upload(self.init_images[0], "init_images")
        self._check_resize_mode(image, size)
        strength = 0.75 if self.denoising_strength is None else self.denoising_strength
        data.update(image=InitImage(image, size, self.resize_mode or 0), strength=strength)
        if self.mask:
            self._check_inpainting_options()
            mask = open_upload(self.mask, "mask")
            self._check_resize_mode(mask, size)
            data["mask_image"] = InpaintMask(mask, size, self.resize_mode or 0, self._blur(), self._invert())
        return data

    def _check_resize_mode(self, image: UploadedImage, size: tuple[int, int]) -> None:
        if (self.resize_mode or 0) not in (0, 1) and image.size != size:
            raise InvalidRequest(
                "resize_mode: only 0 (just resize) and 1 (crop and resize) are offered, or an image of "
                "width × height",
                param="resize_mode",
            )

    def _check_inpainting_options(self) -> None:
        if self.inpaint_full_res:
            raise InvalidRequest(
                "inpaint_full_res: only-masked inpainting is not offered; false inpaints the whole picture",
                param="inpaint_full_res",
            )
        if self.inpainting_fill not in (None, 1):
            raise InvalidRequest(
                "inpainting_fill: inpainting starts from the original pixels (1) only",
                param="inpainting_fill",
            )

    def _blur(self) -> tuple[int, int]:
        if self.mask_blur is not None:
            return self.mask_blur, self.mask_blur
        return self.mask_blur_x or 0, self.mask_blur_y or 0

    def _invert(self) -> bool:
        if self.inpainting_mask_invert not in (None, 0, 1):
            raise InvalidRequest("inpainting_mask_invert: 0 or 1", param="inpainting_mask_invert")
        return bool(self.inpainting_mask_invert)

    def parameters(self) -> dict[str, Any]:
        """As A1111: the images are echoed only with include_init_images."""
        parameters = super().parameters()
        if not self.include_init_images:
            parameters.update(init_images=None, mask=None)
        return parameters


def _resized(image: Image.Image, size: tuple[int, int], resize_mode: int) -> Image.Image:
    if image.size == size:
        return image
    if resize_mode == 1:
        return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
    return image.resize(size, resample=Image.Resampling.LANCZOS)


class InitImage(PendingImage):
    """A1111's init image: transparency flattened onto white, then resized to width × height."""

    def __init__(self, upload: UploadedImage, size: tuple[int, int], resize_mode: int) -> None:
        self.upload, self.target, self.resize_mode = upload, size, resize_mode

    @property
    def size(self) -> tuple[int, int]:
        return self.target

    def decode(self, mode: str) -> Image.Image:
        if self.upload.may_be_transparent():
            rgba = self.upload.decode("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert(mode)
        else:
            image = self.upload.decode(mode)
        return _resized(image, self.target, self.resize_mode)


class InpaintMask(PendingImage):
    """A1111's mask: its opaque pixels (a mask with transparency) or its light ones repainted, inverted
    on request, blurred by mask_blur (a Gaussian of that standard deviation), resized as the image."""

    def __init__(
        self,
        upload: UploadedImage,
        size: tuple[int, int],
        resize_mode: int,
        blur: tuple[int, int],
        invert: bool,
    ) -> None:
        self.upload, self.target, self.resize_mode = upload, size, resize_mode
        self.blur, self.invert = blur, invert

    @property
    def size(self) -> tuple[int, int]:
        return self.target

    def decode(self, mode: str) -> Image.Image:
        mask = self.upload.decode("L")
        if self.upload.may_be_transparent():
            alpha = self.upload.decode("RGBA").getchannel("A")
            if alpha.getextrema()[0] < 255:
                mask = alpha.point(lambda value: 255 if value > 128 else 0)
        if self.invert:
            mask = ImageOps.invert(mask)
        if any(self.blur):
            mask = mask.filter(ImageFilter.GaussianBlur(self.blur))
        return _resized(mask, self.target, self.resize_mode).convert(mode)


def a1111_info(
    body: A1111Fields, request: SDXLRequest, seeds: list[int], infotexts: list[str], started: float
) -> str:
    """The answer's `info`: a JSON string, as A1111's `Processed.js()`, of what was run: the SDXL
    request (`SDXLRequest.as_written`), its images' seeds and infotexts (`infotexts_of`), and when it
    started (`time.time()`). What we have no value for is null (a hash, a VAE's name) or -1."""
    strength = request.effective_strength() if request.image is not None else None
    prompts, negatives = [body.prompt or ""] * len(seeds), [body.negative_prompt or ""] * len(seeds)
    info = {
        "prompt": body.prompt or "",
        "all_prompts": prompts,
        "negative_prompt": body.negative_prompt or "",
        "all_negative_prompts": negatives,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": request.width,
        "height": request.height,
        "sampler_name": body.sampler().name,
        "cfg_scale": request.guidance_scale,
        "steps": request.num_inference_steps,
        "batch_size": body.batch_size or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": MODEL_TITLE,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": job_timestamp(started),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": request.workflow == "inpaint",
        "version": "leap_ray",
    }
    return json.dumps(info)


def job_timestamp(started: float) -> str:
    """A time as A1111 writes a job's start (`state.job_timestamp`): local time, YYYYmmddHHMMSS."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(started))


def infotexts_of(request: SDXLRequest, images: list[bytes], seeds: list[int]) -> list[str]:
    """Each image's infotext as its file carries it (`SDXLRequest.output_marks`, the one writer),
    read back from its `parameters` chunk; where the operator keeps parameters out of files, what
    the same writer gives, naming the model by its title here."""
    if not images:
        return []
    written = [_parameters_of(image) for image in images]
    if all(text is not None for text in written):
        return written  # type: ignore[return-value]
    return [marks.parameters for marks in request.output_marks(seeds, MODEL_TITLE)]


def _parameters_of(image: bytes) -> str | None:
    """An image's `parameters` text: from the chunks before a PNG's pixels, where ours are (no decode:
    ~0.1 ms, not ~30 ms for 1024 × 1024), else wherever `read_marks` finds it."""
    with Image.open(io.BytesIO(image)) as opened:
        text = opened.info.get(PARAMETERS_KEY) if opened.format == "PNG" else None
    return text if isinstance(text, str) else read_marks(image).get(PARAMETERS_KEY)


# SDXL's fields as A1111 names them, for the `param` of an error.
A1111_PARAMS = {
    "num_images_per_prompt": "batch_size",
    "guidance_scale": "cfg_scale",
    "num_inference_steps": "steps",
    "strength": "denoising_strength",
    "image": "init_images",
    "mask_image": "mask",
    "scheduler": "sampler_name",
    "loras": "prompt",
}


def a1111_error(error: LeapRayError, body: A1111Fields) -> LeapRayError:
    """An error of the SDXL request told in A1111's fields: named in `param` and at the head of its
    message (`A1111_PARAMS`); an adapter's value quotes its tag in the prompt, and too many images
    says what batch_size × n_iter came to."""
    ours, head = error.param, error.message.partition(": ")[0]
    name_field(error, A1111_PARAMS)
    if ours in A1111_PARAMS and not error.message.startswith(f"{error.param}: "):
        error.message = f"{error.param}: {error.message}"  # a model check's message names no field
    if ours == "loras" and (tag := _tag_of(head, body.prompt or "")) is not None:
        part = head.split(".")[2]
        error.message = error.message.replace("prompt: ", f"prompt: {tag} {part}: ", 1)
    if ours == "num_images_per_prompt" and (body.n_iter or 1) > 1:
        batch_size, n_iter = body.batch_size or 1, body.n_iter or 1
        images = f"{batch_size} × {n_iter} = {batch_size * n_iter}"
        error.message += f" (the images in all: batch_size × n_iter = {images})"
    return error


def _tag_of(head: str, prompt: str) -> str | None:
    """The prompt's `<lora:...>` tag that an error's "loras.N.part" is about."""
    parts = head.split(".")
    if len(parts) != 3 or parts[0] != "loras" or not parts[1].isdigit():
        return None
    tags = [match.group(0) for match in _LORA_TAG.finditer(prompt)]
    return tags[int(parts[1])] if int(parts[1]) < len(tags) else None
