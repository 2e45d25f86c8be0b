"""How an img2img, inpainting or refining request starts in the step batch, by diffusers' own pipeline methods
(`StableDiffusionXLImg2ImgPipeline` / `StableDiffusionXLInpaintPipeline`, diffusers 0.42) called with the
request's own scheduler and generators, so its latents, noise and mask are exactly a solo call's:
`get_timesteps` (the schedule starts at strength), the image preprocessed and VAE-encoded, noise added
at the first timestep, and for inpainting the mask at latent size. The per-step mask blend is
`InpaintRows.blend`, the loop body of the inpainting pipeline with a 4-channel UNet.

The refiner starts from the base's latents at `denoising_start` (`refine_start`), as its img2img (or,
for an inpainting, its inpainting) pipeline does when it is handed latents: no noise is added, and
the inpainting pipeline draws (and keeps, for its blend) a noise sample from each generator."""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.sdxl_pipelines import PipelineView, encode_vae_image


class _QuietUpcast(logging.Filter):
    """diffusers' img2img and inpainting pipelines move their VAE to float32 and back around every
    image they encode, and each move logs a warning about modules kept in float32: a line per request
    that tells an operator nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_QuietUpcast())


@dataclass
class InpaintRows:
    """What inpainting keeps outside the mask: the image's latents and the noise to bring them to
    each next timestep, and the mask at latent size (1 where the image is repainted)."""

    image_latents: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor

    def blend(
        self, scheduler: Any, latents: torch.Tensor, next_timestep: torch.Tensor | None
    ) -> torch.Tensor:
        """After a scheduler step: the kept region is the image noised to the next timestep (the
        image itself after the last step)."""
        kept = self.image_latents
        if next_timestep is not None:
            kept = scheduler.add_noise(kept, self.noise, torch.tensor([next_timestep]))
        return (1 - self.mask) * kept + self.mask * latents


@dataclass
class ImageStart:
    timesteps: torch.Tensor
    latents: torch.Tensor
    inpaint: InpaintRows | None


def image_start(
    pipeline: StableDiffusionXLPipeline,
    scheduler: Any,
    request: SDXLRequest,
    generators: list[torch.Generator],
    device: torch.device,
    dtype: torch.dtype,
) -> ImageStart:
    """`pipeline` is the workflow's (img2img or inpaint); `scheduler` has its timesteps set."""
    view: Any = PipelineView(pipeline, scheduler=scheduler)
    images, strength = len(generators), request.effective_strength()
    timesteps, _ = type(pipeline).get_timesteps(view, request.num_inference_steps, strength, device)
    first = timesteps[:1].repeat(images)
    size = {"height": request.height, "width": request.width}
    if request.workflow == "img2img":
        image = pipeline.image_processor.preprocess(request.image, **size)
        latents = type(pipeline).prepare_latents(view, image, first, 1, images, dtype, device, generators)
        return ImageStart(timesteps, latents, None)
    image = pipeline.image_processor.preprocess(request.image, **size).to(dtype=torch.float32)
    if (encoded := part_image_latents(pipeline, request, device, dtype)) is not None:
        image = encoded  # as latents, diffusers draws no VAE sample from the part's generators
    mask = pipeline.mask_processor.preprocess(request.mask_image, **size)
    latents, noise, image_latents = type(pipeline).prepare_latents(
        view, images, pipeline.vae.config.latent_channels, request.height, request.width, dtype, device,
        generators, image=image, timestep=first, is_strength_max=strength == 1.0, return_noise=True,
        return_image_latents=True,
    )  # fmt: skip
    # The pipeline encodes the masked image too (a 4-channel UNet does not use it): it draws from the
    # first generator, which later scheduler noise depends on.
    masked_image = None if encoded is not None else image * (mask < 0.5)
    mask, _ = type(pipeline).prepare_mask_latents(
        view, mask, masked_image, images, request.height, request.width, dtype, device, generators, False
    )
    return ImageStart(timesteps, latents, InpaintRows(image_latents, noise, mask))


def part_image_latents(
    pipeline: StableDiffusionXLPipeline, request: SDXLRequest, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """For a part of a split inpainting request without its image 0, the image's latents as the whole
    request's call makes them: sampled from image 0's generator (its first draw). None otherwise."""
    if request.image_encoding_seed is None:
        return None
    size = {"height": request.height, "width": request.width}
    image = pipeline.image_processor.preprocess(request.image, **size).to(device, torch.float32)
    generator = torch.Generator().manual_seed(request.image_encoding_seed)
    return encode_vae_image(pipeline, image.to(dtype), generator)


def refine_start(
    pipeline: StableDiffusionXLPipeline,
    scheduler: Any,
    request: SDXLRequest,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    device: torch.device,
    dtype: torch.dtype,
) -> ImageStart:
    """The refiner's start for the base's `latents` (`pipeline`: the refiner's img2img or inpainting
    pipeline; `scheduler` has its timesteps set): the timesteps after the hand-off point."""
    view: Any = PipelineView(pipeline, scheduler=scheduler)
    options = request.refiner_kwargs()
    # The strength passed is ignored: a denoising_start sets where the schedule starts.
    timesteps, _ = type(pipeline).get_timesteps(
        view, options["num_inference_steps"], 1.0, device, denoising_start=options["denoising_start"]
    )
    latents = latents.to(device, dtype)
    if request.workflow != "inpaint":
        return ImageStart(timesteps, latents, None)
    images, size = len(generators), {"height": request.height, "width": request.width}
    latents, noise, image_latents = type(pipeline).prepare_latents(
        view, images, latents.shape[1], request.height, request.width, dtype, device, generators,
        image=latents, timestep=timesteps[:1].repeat(images), is_strength_max=False, add_noise=False,
        return_noise=True, return_image_latents=True,
    )  # fmt: skip
    mask = pipeline.mask_processor.preprocess(request.mask_image, **size)
    mask, _ = type(pipeline).prepare_mask_latents(
        view, mask, None, images, request.height, request.width, dtype, device, generators, False
    )
    return ImageStart(timesteps, latents, InpaintRows(image_latents, noise, mask))
