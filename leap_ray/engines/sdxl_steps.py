"""Step-level (continuous) batching for SDXL: requests join and leave a running batch at every
denoising step, so a short request never waits for a long one to finish.

Each request carries its own state (`_Run`): its scheduler instance and timesteps, its latents, its
text and micro-conditioning rows, its guidance. A step runs ONE UNet forward over every running
image of the same latent shape and text length, each row at its own timestep (the UNet takes a
per-sample timestep), then applies each request's guidance, rescale and scheduler step to its own
rows. A request whose timesteps are done is decoded and handed back at once.

What it mirrors of `StableDiffusionXLPipeline.__call__` (diffusers 0.42), per request: step 4
`retrieve_timesteps` and 8.1 the `denoising_end` cut; step 5 `prepare_latents` (noise drawn from the
request's own generators, times `init_noise_sigma`); 6 `prepare_extra_step_kwargs`; 7
`_get_add_time_ids` and the [negative; positive] rows of guidance; 8 the loop body (scale the model
input, guidance, `rescale_noise_cfg`, `scheduler.step`, `callback_on_step_end`); and the VAE decode
with its float16 upcast rule. img2img and inpainting requests start as their pipelines start them
(leap_ray.engines.sdxl_images) and then step like any other. A request for the refiner is handed back
as latents, undecoded. Runs with different LoRA adapters share UNet calls: each row gets its own
adapters and scales (leap_ray.engines.sdxl_lora_rows; `per_row_adapters=False`: a call per set).
Images equal a solo pipeline call with the same seeds (tests check)."""

import inspect
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    rescale_noise_cfg,
    retrieve_timesteps,
)

from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.failures import internal_error, model_error, request_error
from leap_ray.engines.sdxl import (
    SDXLEngine,
    SDXLResult,
    _Member,
    _StepFanOut,
    finished,
    own_scheduler,
)
from leap_ray.engines.sdxl_images import InpaintRows, PipelineView, image_start
from leap_ray.errors import LeapRayError


@dataclass
class _Run:
    """A request in the running batch, with everything its own denoising needs."""

    member: _Member
    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor  # (images, channels, h, w)
    prompt_embeds: torch.Tensor  # the UNet's text rows: [negative; positive] when guided
    text_embeds: torch.Tensor
    time_ids: torch.Tensor
    extra_step_kwargs: dict[str, Any]
    admitted_at: float
    inpaint: InpaintRows | None = None
    step: int = 0
    unet_calls: int = 0
    largest_batch: int = 0  # the most images in one UNet call this request was part of

    @property
    def request(self) -> SDXLRequest:
        return self.member.request

    @property
    def guided(self) -> bool:
        return self.request.guidance_is_on()

    def shape(self, per_row_adapters: bool) -> tuple:
        """Runs of one shape can share a UNet call: whatever their LoRA adapters when they act per row,
        else those of one adapter set."""
        adapters = () if per_row_adapters else self.request.lora_scales()
        return (*self.latents.shape[1:], self.prompt_embeds.shape[1], adapters)

    @property
    def finished(self) -> bool:
        return (
            self.step >= len(self.timesteps)
            or self.member.stopped_at_step is not None
            or self.member.error is not None
        )


class StepBatch:
    """The running batch of one replica, driven by one thread: `admit` requests between steps, call
    `step` while `load` is not 0, take each finished request's outcome from `step`'s return.
    Requests admitted between two steps join at the next one, their prompts encoded together."""

    def __init__(self, engine: SDXLEngine) -> None:
        self.engine = engine
        self.pipeline = engine._default
        self.joining: list[_Member] = []
        self.running: list[_Run] = []
        self.unet_calls = 0

    @property
    def load(self) -> int:
        """What the batch holds against max_batch_size: its images, joining or running."""
        return sum(member.count for member in self.joining) + sum(run.member.count for run in self.running)

    def clear(self) -> None:
        self.joining.clear()
        self.running.clear()

    @staticmethod
    def cost(request: SDXLRequest) -> int:
        return request.image_count

    def can_join(self, request: SDXLRequest) -> bool:
        """Besides its images: its LoRA adapters and those of the requests in the batch must all fit in
        the replica at once (else one would be unloaded and reloaded at every step)."""
        return self.engine.adapters.fits(
            [*self._adapters_in_use(), *(name for name, _ in request.lora_scales())]
        )

    def _adapters_in_use(self) -> set[str]:
        members = [*self.joining, *(run.member for run in self.running)]
        return {name for member in members for name, _ in member.request.lora_scales()}

    def warm_up(self) -> None:
        """With a compiled engine, runs a step and a decode at every batch bucket and warm-up size, so
        that no request pays for compiling (the deployment does this before it reports healthy)."""
        speed = self.engine.speed
        if speed.compile_kwargs is None:
            return
        for height, width in speed.warm_up_sizes:
            for images in speed.batch_buckets or [1]:
                for seed in range(images):
                    request = SDXLRequest(
                        prompt="warm-up", height=height, width=width, num_inference_steps=1, seed=seed
                    )
                    if (error := self.admit(request)) is not None:
                        raise error
                while self.load:
                    for _, outcome in self.step():
                        if isinstance(outcome, LeapRayError):
                            raise outcome

    @torch.inference_mode()
    def admit(
        self,
        request: SDXLRequest,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[StepProgress], None] | None = None,
    ) -> LeapRayError | None:
        """Adds the request to the batch, to join at the next step, or returns the error that it
        alone met (the model cannot take it)."""
        try:
            member = self.engine._admit(
                request, self.engine.spec(), should_stop, progress, in_use=self._adapters_in_use()
            )
            self.joining.append(member)
        except Exception as error:
            return request_error(error)
        return None

    def _join(self) -> list[tuple[SDXLRequest, LeapRayError]]:
        """The joining requests start running: their prompts encoded together, their noise drawn.
        Returns those that failed, with their errors."""
        joining, self.joining, failed = self.joining, [], []
        self.engine.encode_all(joining)
        for member in joining:
            try:
                if member.error is not None:
                    raise member.error
                self.running.append(self._run(member))
            except Exception as error:
                failed.append((member.request, request_error(error)))
        return failed

    def _run(self, member: _Member) -> _Run:
        engine, pipeline, request = self.engine, self.pipeline, member.request
        scheduler = own_scheduler(self.pipeline, request.scheduler)
        timesteps, _ = retrieve_timesteps(scheduler, request.num_inference_steps, engine.device)
        member.generators = [torch.Generator().manual_seed(seed) for seed in member.seeds]
        inpaint = None
        if request.workflow == "text2img":
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)
            latents = engine._initial_latents(member, pipeline) * scheduler.init_noise_sigma
        else:
            workflow_pipeline = engine.pipeline_for(request.workflow, None)
            start = image_start(
                workflow_pipeline, scheduler, request, member.generators, engine.device, engine.dtype
            )
            timesteps, latents, inpaint = start.timesteps, start.latents, start.inpaint
        timesteps = timesteps[: self._steps_before_end(scheduler, timesteps, request.denoising_end)]
        prompt_embeds, negative_embeds, pooled, negative_pooled = member.embeds
        time_ids = self._time_id_rows(request, pooled, member.count)
        if request.guidance_is_on():
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            pooled = torch.cat([negative_pooled, pooled])
        return _Run(
            member=member,
            scheduler=scheduler,
            timesteps=timesteps,
            latents=latents,
            prompt_embeds=prompt_embeds.to(engine.device),
            text_embeds=pooled.to(engine.device),
            time_ids=time_ids.to(engine.device),
            extra_step_kwargs=self._extra_step_kwargs(scheduler, member.generators, request.eta),
            admitted_at=time.perf_counter(),
            inpaint=inpaint,
        )

    def _time_id_rows(self, request: SDXLRequest, pooled: torch.Tensor, images: int) -> torch.Tensor:
        """The UNet's added time ids, a row per image (two with guidance), laid out as the workflow's
        pipeline lays them out: text2img pairs [negative, positive] and repeats the pair per image;
        img2img and inpainting repeat each per image, then put the negatives first."""
        time_ids, negative_time_ids = self._time_ids(request, pooled)
        if not request.guidance_is_on():
            return time_ids.repeat(images, 1)
        if request.workflow == "text2img":
            return torch.cat([negative_time_ids, time_ids]).repeat(images, 1)
        return torch.cat([negative_time_ids.repeat(images, 1), time_ids.repeat(images, 1)])

    @staticmethod
    def _extra_step_kwargs(scheduler: Any, generators: list[torch.Generator], eta: float) -> dict[str, Any]:
        """`prepare_extra_step_kwargs` for the request's own scheduler (only DDIM takes eta)."""
        parameters = inspect.signature(scheduler.step).parameters
        extra: dict[str, Any] = {"eta": eta} if "eta" in parameters else {}
        if "generator" in parameters:
            extra["generator"] = generators
        return extra

    @staticmethod
    def _steps_before_end(scheduler: Any, timesteps: torch.Tensor, denoising_end: float | None) -> int:
        """How many timesteps a `denoising_end` keeps (the pipeline's step 8.1)."""
        if denoising_end is None or not 0 < denoising_end < 1:
            return len(timesteps)
        train = scheduler.config.num_train_timesteps
        cutoff = round(train - denoising_end * train)
        return len([t for t in timesteps if t >= cutoff])

    def _time_ids(self, request: SDXLRequest, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The added time ids, and the negative ones (the positive ones unless the request's negative
        micro-conditioning acts), as the pipeline's step 7 builds them (img2img and inpainting by
        their own pipeline's rule)."""
        width = self.pipeline.text_encoder_2.config.projection_dim
        if request.workflow != "text2img":
            return self._image_time_ids(request, pooled.dtype, width)
        positive, negative = request.micro_conditioning()
        time_ids, negative_time_ids = (
            self.pipeline._get_add_time_ids(*sizes, dtype=pooled.dtype, text_encoder_projection_dim=width)
            for sizes in (positive, negative or positive)
        )
        return time_ids, negative_time_ids

    def _image_time_ids(
        self, request: SDXLRequest, dtype: torch.dtype, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (original, crop, target), _ = request.micro_conditioning()
        pipeline = self.engine.pipeline_for(request.workflow, None)
        return pipeline._get_add_time_ids(
            original, crop, target, 6.0, 2.5,  # aesthetic scores: unused by the base model
            request.negative_original_size or original, request.negative_crops_coords_top_left,
            request.negative_target_size or target, dtype=dtype, text_encoder_projection_dim=width,
        )  # fmt: skip

    @torch.inference_mode()
    def step(self) -> list[tuple[SDXLRequest, SDXLResult | LeapRayError]]:
        """One denoising step of every running request (a UNet call per shape), then the outcome of
        each request that finished: its decoded images, or its own error."""
        failed = self._join()
        per_row = self.engine.per_row_adapters
        for shape in dict.fromkeys(run.shape(per_row) for run in self.running):
            group = [run for run in self.running if run.shape(per_row) == shape and not run.finished]
            if group:
                self._denoise(group)
        done = [run for run in self.running if run.finished]
        self.running = [run for run in self.running if not run.finished]
        decoded = [run for run in done if run.member.error is None and not run.request.wants_refiner]
        images = self._decode_together(decoded)
        return failed + [(run.request, self._outcome(run, images.get(id(run)))) for run in done]

    def _decode_together(self, runs: list[_Run]) -> dict[int, Any]:
        """The images of the runs that finished at this step, by run: one VAE call per latent shape.
        If a shared call fails, each run is decoded alone, and only one that fails alone gets its
        error (in place of its images)."""
        decoded: dict[int, Any] = {}
        for shape in dict.fromkeys(run.latents.shape[1:] for run in runs):
            group = [run for run in runs if run.latents.shape[1:] == shape]
            try:
                images = self.engine.decoder(torch.cat([run.latents for run in group]))
            except Exception as error:
                if len(group) == 1:
                    decoded[id(group[0])] = request_error(error)
                else:
                    for run in group:
                        decoded.update(self._decode_together([run]))
                continue
            for run, part in zip(group, _split(images, [run.member.count for run in group]), strict=True):
                decoded[id(run)] = part
        return decoded

    def _denoise(self, runs: list[_Run]) -> None:
        """One UNet call over the runs' rows, each at its own timestep, then each run's own step. If the
        shared call fails, each run is stepped alone: only one that fails alone gets the error."""
        try:
            noise = self._unet(runs)
        except Exception as error:
            if len(runs) == 1:
                runs[0].member.error = model_error(error)
            else:
                for run in runs:
                    self._denoise([run])
            return
        for run, prediction in zip(runs, noise, strict=True):
            try:
                self._scheduler_step(run, prediction)
            except Exception as error:
                run.member.error = request_error(error)

    def _unet(self, runs: list[_Run]) -> list[torch.Tensor]:
        inputs, timesteps = [], []
        for run in runs:
            t = run.timesteps[run.step]
            latents = torch.cat([run.latents] * 2) if run.guided else run.latents
            inputs.append(run.scheduler.scale_model_input(latents, t))
            timesteps.append(t.expand(latents.shape[0]))
        with self._adapters_acting(runs, inputs):
            noise = self.engine.unet(
                torch.cat(inputs),
                torch.cat(timesteps).to(torch.float32),  # one dtype whatever the schedulers: no recompiles
                torch.cat([run.prompt_embeds for run in runs]),
                torch.cat([run.text_embeds for run in runs]),
                torch.cat([run.time_ids for run in runs]),
            )
        self.unet_calls += 1
        images = sum(run.member.count for run in runs)
        for run in runs:
            run.unet_calls += 1
            run.largest_batch = max(run.largest_batch, images)
        return list(noise.split([len(model_input) for model_input in inputs]))

    def _adapters_acting(self, runs: list[_Run], inputs: list[torch.Tensor]) -> AbstractContextManager:
        """The runs' LoRA adapters acting in the UNet call over `inputs`: per row, or as one set."""
        adapters = self.engine.adapters
        if not self.engine.per_row_adapters:
            adapters.activate(runs[0].request.lora_scales())
            return nullcontext()
        row_scales = [run.request.lora_scales() for run, rows in zip(runs, inputs, strict=True) for _ in rows]
        return adapters.per_row(row_scales, self.engine.device)

    def _scheduler_step(self, run: _Run, noise: torch.Tensor) -> None:
        request, t = run.request, run.timesteps[run.step]
        if run.guided:
            unconditional, text = noise.chunk(2)
            noise = unconditional + request.guidance_scale * (text - unconditional)
            if request.guidance_rescale > 0.0:
                noise = rescale_noise_cfg(noise, text, guidance_rescale=request.guidance_rescale)
        run.latents = run.scheduler.step(noise, t, run.latents, **run.extra_step_kwargs, return_dict=False)[0]
        if run.inpaint is not None:
            following = run.timesteps[run.step + 1] if run.step + 1 < len(run.timesteps) else None
            run.latents = run.inpaint.blend(run.scheduler, run.latents, following)
        self._step_end(run, t)
        run.step += 1

    def _step_end(self, run: _Run, t: torch.Tensor) -> None:
        """The request's callback, stop check and progress, as the request-level engine runs them."""
        member = run.member
        member.start = 0
        tensors = {
            "latents": run.latents,
            "prompt_embeds": run.prompt_embeds,
            "add_text_embeds": run.text_embeds,
            "add_time_ids": run.time_ids,
        }
        # Its own number of steps, and an interrupt flag of its own (the fan-out reads it).
        view = PipelineView(self.pipeline, num_timesteps=len(run.timesteps), _interrupt=False)
        try:
            _StepFanOut([member], member.count)(view, run.step, t, tensors)
        except Exception as error:
            member.error = internal_error(error)
        run.latents, run.prompt_embeds = tensors["latents"], tensors["prompt_embeds"]
        run.text_embeds, run.time_ids = tensors["add_text_embeds"], tensors["add_time_ids"]

    def _outcome(self, run: _Run, images: Any) -> SDXLResult | LeapRayError:
        member = run.member
        if member.error is not None:
            return member.error
        if isinstance(images, LeapRayError):
            return images
        timings = {"encode_s": member.encode_s, "generate_s": time.perf_counter() - run.admitted_at}
        rows = run.latents if run.request.wants_refiner else images
        return finished(member, rows, timings, run.largest_batch)


def _split(images: Any, counts: list[int]) -> list[Any]:
    """Consecutive slices of `images` of the given lengths."""
    starts = [sum(counts[:index]) for index in range(len(counts))]
    return [images[start : start + count] for start, count in zip(starts, counts, strict=True)]
