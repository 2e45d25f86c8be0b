"""A request's way through an SDXL step batch: `Admitted` (checked, seeded, waiting for its prompts to
be encoded), then `Run` (denoising: its own scheduler, latents and conditioning rows), then its
`SDXLResult` (leap_ray.engines.results).

A run starts as diffusers' pipeline call starts (diffusers 0.42, `StableDiffusionXLPipeline.__call__`):
step 4 `retrieve_timesteps` and 8.1 the `denoising_end` cut; step 5 `prepare_latents` (noise drawn
from the request's own generators, times `init_noise_sigma`); 6 `prepare_extra_step_kwargs`; 7 the
added time ids and the [negative; positive] rows of guidance. img2img, inpainting and the refiner's
start come from their own pipelines' methods (leap_ray.engines.sdxl_images)."""

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from leap_ray.api.handoff import RefineRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.contract import ProgressHook, StopCheck
from leap_ray.engines.failures import blame
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl_images import ImageStart, InpaintRows
from leap_ray.engines.sdxl_pipelines import add_time_ids
from leap_ray.errors import LeapRayError


@dataclass(eq=False)
class Admitted:
    """A request taken into a step batch, its prompts not yet encoded (requests admitted between two
    steps are encoded together). `handoff` is the base's hand-off when the refiner runs it."""

    request: SDXLRequest
    seeds: list[int]
    should_stop: StopCheck | None = None
    progress: ProgressHook | None = None
    handoff: RefineRequest | None = None
    embeds: tuple[torch.Tensor | None, ...] = ()  # prompt, negative, pooled, negative pooled
    encode_s: float = 0.0
    error: LeapRayError | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)

    @property
    def submitted(self) -> SDXLRequest | RefineRequest:
        """What was admitted, as its caller knows it (the hand-off, for the refiner)."""
        return self.handoff if self.handoff is not None else self.request

    def generators(self) -> list[torch.Generator]:
        """A CPU generator per image: seeded (seed + j), or as the base left them for the refiner."""
        if self.handoff is None:
            return [torch.Generator().manual_seed(seed) for seed in self.seeds]
        generators = [torch.Generator() for _ in self.handoff.generator_states]
        for generator, state in zip(generators, self.handoff.generator_states, strict=True):
            generator.set_state(state)
        return generators


@dataclass(eq=False)
class Run:
    """A request denoising in the step batch, with everything its own steps need."""

    admitted: Admitted
    generators: list[torch.Generator]
    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor  # (images, channels, h, w)
    prompt_embeds: torch.Tensor  # the UNet's text rows: [negative; positive] when guided
    text_embeds: torch.Tensor
    time_ids: torch.Tensor
    extra_step_kwargs: dict[str, Any]
    inpaint: InpaintRows | None
    admitted_at: float = field(default_factory=time.perf_counter)
    step: int = 0
    stopped_at_step: int | None = None
    unet_calls: int = 0
    largest_batch: int = 0  # the most images in one UNet call this request was part of

    @property
    def request(self) -> SDXLRequest:
        return self.admitted.request

    @property
    def error(self) -> LeapRayError | None:
        return self.admitted.error

    @error.setter
    def error(self, error: LeapRayError) -> None:
        self.admitted.error = error

    @property
    def guided(self) -> bool:
        return self.request.guidance_is_on()

    @property
    def finished(self) -> bool:
        return self.step >= len(self.timesteps) or self.stopped_at_step is not None or self.error is not None

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.admitted_at

    def result(self, images: Sequence[np.ndarray], timings: dict[str, float]) -> SDXLResult:
        """The run's result: its images, or its latents and generators for the refiner."""
        result = SDXLResult(
            images=list(images),
            seeds=self.admitted.seeds,
            timings=timings,
            batch_size=self.largest_batch,
            stopped_at_step=self.stopped_at_step,
        )
        if self.request.wants_refiner:
            result.latents = self.latents.detach().cpu()
            result.generator_states = [generator.get_state() for generator in self.generators]
        return result


def start_run(
    admitted: Admitted,
    scheduler: Any,
    generators: list[torch.Generator],
    start: ImageStart,
    time_ids: tuple[torch.Tensor, torch.Tensor],
    paired_time_ids: bool,
) -> Run:
    """The run of an admitted request, from its start (timesteps, latents) and its added time ids
    (positive, negative); `paired_time_ids` is text2img's layout of them (see `time_id_rows`)."""
    request = admitted.request
    prompt_embeds, negative_embeds, pooled, negative_pooled = admitted.embeds
    rows = time_id_rows(*time_ids, admitted.count, request.guidance_is_on(), paired_time_ids)
    if request.guidance_is_on():
        prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
        pooled = torch.cat([negative_pooled, pooled])
    device = start.latents.device
    return Run(
        admitted=admitted,
        generators=generators,
        scheduler=scheduler,
        timesteps=start.timesteps,
        latents=start.latents,
        prompt_embeds=prompt_embeds.to(device),
        text_embeds=pooled.to(device),
        time_ids=rows.to(device),
        extra_step_kwargs=extra_step_kwargs(scheduler, generators, request.eta),
        inpaint=start.inpaint,
    )


def initial_latents(
    request: SDXLRequest,
    generators: list[torch.Generator],
    pipeline: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """text2img's starting latents: the request's own, or one draw per image from its own generator, as
    the pipeline's prepare_latents does (not yet times the scheduler's `init_noise_sigma`)."""
    if request.latents is not None:
        with blame("latents"):
            return request.latents.to(device, dtype)
    shape = (
        1,
        pipeline.unet.config.in_channels,
        request.height // pipeline.vae_scale_factor,
        request.width // pipeline.vae_scale_factor,
    )
    return torch.cat([randn_tensor(shape, generator=g, device=device, dtype=dtype) for g in generators])


def text_time_ids(
    pipeline: Any, request: SDXLRequest, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """text2img's added time ids, and the negative ones (the positive ones unless the request's
    negative micro-conditioning acts), as the pipeline's step 7 builds them."""
    positive, negative = request.micro_conditioning()
    time_ids = add_time_ids(pipeline, *positive, dtype=dtype)
    return time_ids, add_time_ids(pipeline, *negative, dtype=dtype) if negative else time_ids


def image_time_ids(
    pipeline: Any, request: SDXLRequest, dtype: torch.dtype, aesthetic: tuple[float, float] = (6.0, 2.5)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The img2img and inpainting pipelines' added time ids and negative ones (their rule: negative sizes
    default to the positive ones); the aesthetic scores act only with a refiner's weights."""
    (original, crop, target), _ = request.micro_conditioning()
    negative_original = request.negative_original_size or original
    negative_target = request.negative_target_size or target
    return add_time_ids(
        pipeline, original, crop, target, *aesthetic, negative_original,
        request.negative_crops_coords_top_left, negative_target, dtype=dtype,
    )  # fmt: skip


def time_id_rows(
    positive: torch.Tensor, negative: torch.Tensor, images: int, guided: bool, paired: bool
) -> torch.Tensor:
    """The UNet's added time ids, a row per image (two with guidance), laid out as the workflow's
    pipeline lays them out: text2img (`paired`) pairs [negative, positive] and repeats the pair per
    image; img2img and inpainting repeat each per image, then put the negatives first."""
    if not guided:
        return positive.repeat(images, 1)
    if paired:
        return torch.cat([negative, positive]).repeat(images, 1)
    return torch.cat([negative.repeat(images, 1), positive.repeat(images, 1)])


def extra_step_kwargs(scheduler: Any, generators: list[torch.Generator], eta: float) -> dict[str, Any]:
    """`prepare_extra_step_kwargs` for the request's own scheduler (only DDIM takes eta)."""
    parameters = inspect.signature(scheduler.step).parameters
    extra: dict[str, Any] = {"eta": eta} if "eta" in parameters else {}
    if "generator" in parameters:
        extra["generator"] = generators
    return extra


def steps_before_end(scheduler: Any, timesteps: torch.Tensor, denoising_end: float | None) -> int:
    """How many timesteps a `denoising_end` keeps (the pipeline's step 8.1)."""
    if denoising_end is None or not 0 < denoising_end < 1:
        return len(timesteps)
    train = scheduler.config.num_train_timesteps
    cutoff = round(train - denoising_end * train)
    return len([t for t in timesteps if t >= cutoff])
