"""Decoding and previews for an SDXL step batch: latents to images as the pipeline's decode does, one
VAE call for the images of one shape that finished at a step, and cheap latent previews.

The VAE keeps diffusers' rule for float16: a VAE that asks for it (`force_upcast`, as SDXL's does:
it overflows in float16) decodes in float32. Diffusers casts the whole VAE up and back on every call;
here a float32 copy of it is kept, which gives the same image without the casts.

SDXL's invisible watermark is applied as diffusers' pipelines apply it (its
`StableDiffusionXLWatermarker`, on the VAE's output before the image processor), but per image: only
the rows whose request wants it (`apply_watermark`), so a batch's rows never change one another's.
It runs on the CPU, as diffusers' does: 0.03 s for a 256² image and 0.29 s at 1024² on one core of
this project's 2-core machine. So it is not done where the decode runs (the step thread, where it
would hold every batch neighbour's next step): a decode hands back `Decoded` images, the marked
rows' VAE output copied to the CPU, and `Decoded.images` marks them wherever it is called (the step
batch's marking workers, `sdxl_marking`), with diffusers' own watermarker and image processor."""

import base64
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import is_invisible_watermark_available

from leap_ray.api.images import encode_image
from leap_ray.engines.failures import request_error
from leap_ray.engines.sdxl_fast import SDXLSpeed, compiled_decode
from leap_ray.errors import LeapRayError

# diffusers marks images at least this wide; imwatermark refuses images of fewer pixels (diffusers'
# call would fail on them: 512×64, say), which are left unmarked here.
WATERMARK_MIN_WIDTH = 256
WATERMARK_MIN_PIXELS = 256 * 256
# invisible-watermark declares opencv-python (the GUI build, needing libGL) and torch: it is installed
# without them (the serve extra has opencv-python-headless and PyWavelets, what it imports). The
# Makefile, the README's install commands and the GPU check's wheels install this version.
INSTALL_WATERMARK = "pip install --no-deps invisible-watermark==0.2.0"


def sdxl_watermarker(watermark: bool) -> Any:
    """diffusers' StableDiffusionXLWatermarker when `watermark`, else None. Raises ValueError when the
    invisible-watermark package is missing: a replica that should mark images never starts without."""
    if not watermark:
        return None
    if not is_invisible_watermark_available():
        raise ValueError(
            "SDXL's invisible watermark is on (the default) but the invisible-watermark package (module "
            f"imwatermark) is not installed: run `{INSTALL_WATERMARK}` where the replicas run (after "
            "`pip install '.[serve]'`; `make install` does both), or turn the watermark off with "
            "`engine_kwargs: {watermark: false}` on `sdxl` and `refiner` in the config"
        )
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    return StableDiffusionXLWatermarker()


def watermarkable(height: int, width: int) -> bool:
    """Whether an image of this size gets SDXL's watermark: diffusers' rule and imwatermark's."""
    return width >= WATERMARK_MIN_WIDTH and height * width >= WATERMARK_MIN_PIXELS


@dataclass
class Decoded:
    """Decoded images, (images, height, width, 3) floats in [0, 1], final but for `marked` rows: those
    get SDXL's watermark in `images()`, from `vae_output` (their VAE output, in [-1, 1], on the CPU)."""

    pixels: np.ndarray
    marked: list[int] = field(default_factory=list)
    vae_output: torch.Tensor | None = None
    mark: Callable[[torch.Tensor], np.ndarray] | None = None  # VAE output -> marked pixels

    @property
    def pending(self) -> bool:
        """Whether `images()` has a watermark to apply (CPU work, kept off the step thread)."""
        return bool(self.marked)

    def rows(self, start: int, stop: int) -> "Decoded":
        """Images start..stop, with their own rows to mark."""
        inside = [at for at, row in enumerate(self.marked) if start <= row < stop]
        return Decoded(
            self.pixels[start:stop],
            [self.marked[at] - start for at in inside],
            self.vae_output[inside] if inside and self.vae_output is not None else None,
            self.mark,
        )

    def images(self) -> np.ndarray:
        """The final images: the marked rows watermarked as diffusers' call marks them."""
        if not self.marked or self.mark is None or self.vae_output is None:
            return self.pixels
        pixels = self.pixels.copy()
        pixels[self.marked] = self.mark(self.vae_output)
        return pixels


class LatentDecoder:
    """Latents to images as the pipeline's decode does (latent scaling, the VAE, the watermark, the
    image processor), with diffusers' float32 rule kept on a float32 copy of the VAE. Compiled, it
    decodes one image per call, so that the compiled VAE sees one shape per size. With `watermark`,
    the rows asked for are marked (`sdxl_watermarker`)."""

    def __init__(
        self, pipeline: StableDiffusionXLPipeline, speed: SDXLSpeed, watermark: bool = False
    ) -> None:
        self.pipeline = pipeline
        vae = pipeline.vae
        if vae.dtype == torch.float16 and vae.config.force_upcast:
            vae = copy.deepcopy(vae).to(torch.float32)
        self.vae = vae
        self.per_image = speed.compile_kwargs is not None
        self.decode_fn = compiled_decode(vae, speed)
        self.watermarker = sdxl_watermarker(watermark)

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        latents = latents.to(self.vae.dtype)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return latents / config.scaling_factor
        view = (1, len(mean), 1, 1)
        mean = torch.tensor(mean).view(view).to(latents.device, latents.dtype)
        std = torch.tensor(std).view(view).to(latents.device, latents.dtype)
        return latents * std / config.scaling_factor + mean

    def __call__(self, latents: torch.Tensor, marked: Sequence[bool] = ()) -> Decoded:
        """The images of (images, channels, h, w) latents; image i to be watermarked when `marked[i]`
        (and the decoder marks images at all): its VAE output is kept, on the CPU, for `images()`."""
        latents = self.unscale(latents)
        parts = latents.split(1) if self.per_image else [latents]
        # Copies, as the UNet's: a graph replay would overwrite the previous part's output.
        image = torch.cat([self.decode_fn(part, return_dict=False)[0].clone() for part in parts])
        pixels = self.pipeline.image_processor.postprocess(image, output_type="np")
        rows = [index for index, mark in enumerate(marked) if mark]
        if not rows or self.watermarker is None or not watermarkable(*image.shape[-2:]):
            return Decoded(pixels)
        # On the CPU now (the copy the post-processing just waited for anyway): the marking thread
        # then touches no GPU memory and no CUDA stream of this thread's.
        return Decoded(pixels, rows, image[rows].cpu(), self.mark_rows)

    def mark_rows(self, vae_output: torch.Tensor) -> np.ndarray:
        """Rows as diffusers' call makes them: marked on the VAE's output, then post-processed (the
        unmarked rows keep the post-processing of the VAE's own dtype and device)."""
        watermarked = self.watermarker.apply_watermark(vae_output)
        return self.pipeline.image_processor.postprocess(watermarked, output_type="np")


def decode_together(
    decode: Callable[..., Decoded], latents: Sequence[torch.Tensor], marked: Sequence[bool] | None = None
) -> list[Decoded | LeapRayError]:
    """Each entry's images (or its own error), with one `decode` call per latent shape; entry i's
    images to be watermarked when `marked[i]` (`LatentDecoder`). If a shared call fails, each entry
    is decoded alone, and only one that fails alone gets its error."""
    marked = marked if marked is not None else [False] * len(latents)
    decoded: list[Decoded | LeapRayError | None] = [None] * len(latents)
    for shape in dict.fromkeys(tensor.shape[1:] for tensor in latents):
        group = [index for index, tensor in enumerate(latents) if tensor.shape[1:] == shape]
        rows = [marked[index] for index in group for _ in range(latents[index].shape[0])]
        try:
            images = decode(torch.cat([latents[index] for index in group]), rows)
        except Exception as error:
            if len(group) == 1:
                decoded[group[0]] = request_error(error)
                continue
            for index in group:
                decoded[index] = decode_together(decode, [latents[index]], [marked[index]])[0]
            continue
        start = 0
        for index in group:
            count = latents[index].shape[0]
            decoded[index], start = images.rows(start, start + count), start + count
    return decoded


# SDXL's 4 latent channels to RGB, a linear fit to its VAE (as ComfyUI's latent previews use): a preview
# costs one small matrix product instead of a VAE decode.
LATENT_RGB = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latent_preview(latents: torch.Tensor) -> str:
    """A (4, h, w) latent as a base64 PNG of h × w pixels."""
    rgb = torch.einsum("chw,cr->hwr", latents.float().cpu(), LATENT_RGB) + LATENT_RGB_BIAS
    pixels = ((rgb + 1) / 2).clamp(0, 1).numpy()
    return base64.b64encode(encode_image(pixels, "png")).decode()
