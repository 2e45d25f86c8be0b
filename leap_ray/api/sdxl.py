"""The SDXL request: its fields (declared with their bounds in `leap_ray.api.sdxl_fields`), the
rules that join them (`leap_ray.api.sdxl_checks`), and its conversions: a request converts itself
into pipeline arguments (`to_pipeline_kwargs`) and splits itself into smaller requests (`split`)."""

import base64
from dataclasses import dataclass
from typing import Any

from pydantic import PrivateAttr, model_validator

from leap_ray.api.common import draw_seed, offset_seed
from leap_ray.api.infotext import SAMPLER_NAMES, infotext
from leap_ray.api.marks import OutputMarks, request_record
from leap_ray.api.responses import SDXLImage, SDXLResponse
from leap_ray.api.sdxl_checks import SDXLModelSpec, check_against, check_combinations
from leap_ray.api.sdxl_fields import (
    CALL_PARAMETERS,
    EMBEDDING_FIELDS,
    PROMPT_PARAMETERS,
    TEXT_FIELDS,
    SDXLFields,
)

# Defined with the fields; other modules import them from here (a redundant alias marks a re-export).
from leap_ray.api.sdxl_fields import CALLBACK_TENSOR_INPUTS as CALLBACK_TENSOR_INPUTS
from leap_ray.api.sdxl_fields import SCHEDULERS as SCHEDULERS
from leap_ray.api.sdxl_fields import SDXL_EXAMPLE as SDXL_EXAMPLE
from leap_ray.api.sdxl_workflows import RefinerOptions

GUIDANCE_THRESHOLD = 1.0  # classifier-free guidance acts above this scale (diffusers' rule)


def guidance_is_on(scale: float) -> bool:
    """Whether classifier-free guidance acts at this guidance scale: above 1, as diffusers decides."""
    return scale > GUIDANCE_THRESHOLD


class SDXLRequest(SDXLFields):
    """One SDXL generation. Image j of a request (counting num_images_per_prompt images for each
    prompt in order) is drawn with `torch.Generator().manual_seed(seed + j)`, whatever else shares
    its batch, so a solo diffusers call with `generator=[Generator().manual_seed(seed + j) ...]`
    reproduces it."""

    _image_encoding_seed: int | None = PrivateAttr(None)
    # A part of a split request (`split`): the record of the client's request (with the seed it ran
    # with) and the part's first image in it, which its outputs' records name.
    _whole: tuple[dict[str, Any], int] | None = PrivateAttr(None)
    _prompt_as_written: str | None = PrivateAttr(None)  # see `as_written`

    @model_validator(mode="after")
    def _check_combinations(self) -> "SDXLRequest":
        check_combinations(self)
        return self

    def check_against(self, spec: SDXLModelSpec) -> None:
        """Raises InvalidRequest, naming the field, for tensors the loaded model would reject and for
        what the graph does not offer (a refiner, an adapter)."""
        check_against(self, spec)

    def uploads_as_png(self) -> dict[str, str | None]:
        """The uploaded images it was given (image, mask_image) as PNG data: URIs of their decoded
        pixels (None for a mask that OpenAI's transparency rule found empty)."""
        return self.model_dump(mode="json", include={"image", "mask_image"} & self.model_fields_set)

    def lora_scales(self) -> tuple[tuple[str, float], ...]:
        """The adapters and their scales, as the engine applies them."""
        return tuple((lora.name, lora.scale) for lora in self.loras)

    def adapter_set(self) -> str:
        """The adapters this request needs loaded, as one id (Serve's multiplexed model id): "" for
        none. Scales are not in it: they change nothing that must be loaded."""
        return "+".join(sorted(lora.name for lora in self.loras))

    def to_pipeline_kwargs(self) -> dict[str, Any]:
        """Arguments for `StableDiffusionXLPipeline.__call__` (all but generator and the callback).
        A single negative or secondary prompt is repeated for every prompt of a list, which diffusers
        itself would refuse for prompt_2."""
        kwargs: dict[str, Any] = {name: getattr(self, name) for name in PROMPT_PARAMETERS}
        kwargs.update(self.call_kwargs(), num_images_per_prompt=self.num_images_per_prompt)
        if isinstance(self.prompt, list):
            for name in TEXT_FIELDS:
                if isinstance(kwargs[name], str):
                    kwargs[name] = [kwargs[name]] * len(self.prompt)
        return kwargs

    def refiner_kwargs(self) -> dict[str, Any]:
        """The refiner stage's own arguments of `StableDiffusionXLImg2ImgPipeline.__call__`, defaults
        resolved; it takes the rest (guidance, eta, micro-conditioning, sampler) from the request."""
        options = self.refiner or RefinerOptions()
        return {
            "num_inference_steps": options.num_inference_steps or self.num_inference_steps,
            "denoising_start": options.denoising_start or self.denoising_end,
            "aesthetic_score": options.aesthetic_score,
            "negative_aesthetic_score": options.negative_aesthetic_score,
        }

    def prompt_texts(self) -> dict[str, list[str] | None] | None:
        """The texts the text encoders read, one entry per prompt, as the pipeline resolves them
        (prompt_2 defaults to prompt, negative_prompt_2 to negative_prompt); None when the request
        brings embeddings instead."""
        if any(getattr(self, name) is not None for name in EMBEDDING_FIELDS):
            return None
        kwargs = self.to_pipeline_kwargs()
        texts = {
            name: [kwargs[name]] if isinstance(kwargs[name], str) else kwargs[name] for name in TEXT_FIELDS
        }
        texts["prompt_2"] = texts["prompt_2"] or texts["prompt"]
        texts["negative_prompt_2"] = texts["negative_prompt_2"] or texts["negative_prompt"]
        return texts

    def call_kwargs(self) -> dict[str, Any]:
        """The arguments that set up the pipeline call itself (sizes, steps, micro-conditioning)."""
        return {name: getattr(self, name) for name in CALL_PARAMETERS}

    def guidance_is_on(self) -> bool:
        """Whether classifier-free guidance acts for this request (`guidance_is_on` of its scale)."""
        return guidance_is_on(self.guidance_scale)

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

    def output_marks(self, seeds: list[int], model: str, refiner: str | None = None) -> list[OutputMarks]:
        """What each of its images says about itself (`leap_ray.api.marks`): its own prompt, seed and
        parameters as AUTOMATIC1111 writes them, and this request as JSON (with its seed, image 0's).
        `model` made the images; `refiner`, when named, finished them. A part of a split request
        records the client's request and each image's index in it."""
        whole, first = self._whole or (request_record(self, seed=seeds[0]), 0)
        record = {"model": model, "refiner": refiner, "request": whole}
        return [
            OutputMarks(
                title=self._text("prompt", index // self.num_images_per_prompt),
                parameters=self._infotext(index, seed, model, refiner),
                record=record | {"image": first + index, "seed": seed},
            )
            for index, seed in enumerate(seeds)
        ]

    def as_written(self, prompt: str) -> "SDXLRequest":
        """This request, its images' parameters naming `prompt` as a client wrote it (an A1111 prompt,
        its `<lora:NAME:SCALE>` tags where they were) instead of our prompt with its adapters' tags
        after it; the same request when the two agree."""
        written = self.model_copy()
        written._prompt_as_written = None if prompt == self._infotext_prompt(0) else prompt
        return written

    def _infotext_prompt(self, prompt_index: int) -> str:
        if self._prompt_as_written is not None:
            return self._prompt_as_written
        adapters = "".join(f" <lora:{name}:{scale:g}>" for name, scale in self.lora_scales())
        return self._text("prompt", prompt_index) + adapters

    def _infotext(self, index: int, seed: int, model: str, refiner: str | None) -> str:
        prompt_index = index // self.num_images_per_prompt
        pairs = {
            "Steps": self.num_inference_steps,
            "Sampler": SAMPLER_NAMES.get(self.scheduler or ""),  # the model's own: not named
            "CFG scale": self.guidance_scale,
            "Seed": seed,
            "Size": f"{self.width}x{self.height}",
            "Model": model,
            "Denoising strength": self.effective_strength() if self.image is not None else None,
            "Eta DDIM": self.eta if self.scheduler == "ddim" and self.eta else None,
            "Refiner": refiner,
            "Refiner switch at": self.refiner_kwargs()["denoising_start"] if refiner else None,
        }
        prompt = self._infotext_prompt(prompt_index)
        return infotext(prompt, self._text("negative_prompt", prompt_index), pairs)

    def _text(self, name: str, prompt_index: int) -> str:
        """A text field's value for one prompt ("" when absent: embeddings stood in for it)."""
        value = getattr(self, name)
        return (value[prompt_index] if isinstance(value, list) else value) or ""

    def split(self, max_images: int) -> list["SDXLRequest"]:
        """This request as requests of at most `max_images` images each, in image order, that make
        the same images: each takes one prompt's rows (text, embeddings, latents) and image j's seed
        (the seed is drawn here when absent, so that the parts' images follow one another)."""
        if self.image_count <= max_images:
            return [self]
        per_prompt = self.num_images_per_prompt
        seed = self.seed if self.seed is not None else draw_seed()
        # The client's request, as a part of a part records it too.
        whole, offset = self._whole or (request_record(self, seed=seed), 0)
        parts = []
        for prompt in range(self.prompt_count):
            for first in range(0, per_prompt, max_images):
                part = self._part(prompt, first, min(max_images, per_prompt - first), seed)
                part._whole = (whole, offset + prompt * per_prompt + first)
                parts.append(part)
        return parts

    def _part(self, prompt: int, first: int, images: int, seed: int) -> "SDXLRequest":
        image = prompt * self.num_images_per_prompt + first
        update: dict[str, Any] = {"num_images_per_prompt": images, "seed": offset_seed(seed, image)}
        for name in TEXT_FIELDS:
            if isinstance(value := getattr(self, name), list):
                update[name] = [value[prompt]]
        for name in EMBEDDING_FIELDS:
            if (tensor := getattr(self, name)) is not None:
                update[name] = tensor[prompt : prompt + 1]
        if self.latents is not None:
            update["latents"] = self.latents[image : image + images]
        encoding_seed = self.image_encoding_seed  # a part of a part keeps the whole request's
        if encoding_seed is None and self.workflow == "inpaint" and image > 0:
            encoding_seed = seed
        # model_construct: the fields are this request's, validated, and the part is built with its
        # private state rather than having it written in afterwards.
        return type(self).model_construct(
            self.model_fields_set | update.keys(),
            **(dict(self) | update),
            _image_encoding_seed=encoding_seed,
            _prompt_as_written=self._prompt_as_written,
        )

    @property
    def image_encoding_seed(self) -> int | None:
        """For a part of a split inpainting request without its image 0: that image's seed. diffusers
        draws the image's VAE sample from image 0's generator alone, so the part must too."""
        return self._image_encoding_seed


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
