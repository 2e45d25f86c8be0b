"""One lane of an SDXL step batch (`sdxl_steps.StepBatch`): the runs that step together on one thread,
and what a step batch needs of its engine (`Denoiser`).

Each request carries its own state (`sdxl_runs.Run`): its scheduler instance and timesteps, its
latents, its text and micro-conditioning rows, its guidance. A step runs ONE UNet forward over every
running image of the same latent shape and text length, each row at its own timestep (the UNet takes
a per-sample timestep), then applies each request's guidance, rescale and scheduler step to its own
rows, and its step end (`sdxl_step_end`). A request whose timesteps are done is decoded and handed
back at once (a request for the refiner: as latents, undecoded), or, when its images are to be
watermarked, handed to the step batch's marking workers (`sdxl_marking`), off this thread. Runs
with different LoRA adapters share UNet calls: each row gets its own adapters and scales
(leap_ray.engines.sdxl_lora_rows).
Images equal a solo diffusers call with the same seeds (tests check)."""

from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

from leap_ray.engines.contract import Outcome, ProgressHook, StopCheck
from leap_ray.engines.failures import model_error, request_error
from leap_ray.engines.results import SDXLResult
from leap_ray.engines.sdxl_decode import Decoded, decode_together
from leap_ray.engines.sdxl_marking import Marker
from leap_ray.engines.sdxl_prompts import PromptEncoder
from leap_ray.engines.sdxl_runs import Admitted, Run
from leap_ray.engines.sdxl_step_end import end_step
from leap_ray.errors import LeapRayError


class Denoiser(Protocol):
    """What a step batch needs of its engine: the SDXL base (`SDXLEngine`) or the refiner."""

    pipeline: Any  # the loaded pipeline: what a request's callback sees, with its own attributes
    device: torch.device
    own_lane_above: int | None  # pixels an image may have and still step in the main lane (None: any)
    model_lock: AbstractContextManager  # held while the modules change (an adapter loads); see OwnLane
    prompts: PromptEncoder
    unet: Callable[..., torch.Tensor]  # sdxl_fast.UNetRunner
    decoder: Callable[..., Decoded]  # sdxl_decode.LatentDecoder: (latents, rows to watermark)

    def admit(
        self, request: Any, should_stop: StopCheck | None, progress: ProgressHook | None, in_use: set[str]
    ) -> Admitted:
        """The request checked against the model and seeded (its adapters loaded, never unloading those
        `in_use` by running requests); raises its error."""

    def can_join(self, request: Any, in_use: set[str]) -> bool:
        """Whether the request's adapters fit in the replica beside those `in_use`."""

    def start(self, admitted: Admitted) -> Run:
        """The admitted request's run, its prompts encoded; raises its error."""

    def sharing_key(self, run: Run) -> tuple:
        """Runs with equal keys share a UNet call."""

    def adapters_acting(self, runs: list[Run], rows: list[int]) -> AbstractContextManager:
        """The runs' adapters acting in a UNet call where run i has `rows[i]` rows."""

    def timings(self, run: Run) -> dict[str, float]:
        """A finished run's timings."""


class Lane:
    """Runs that step together, on one thread: at each step a UNet call per sharing key (latent shape,
    text length), then each run's own step; finished runs are decoded together by shape."""

    def __init__(
        self,
        engine: Denoiser,
        unet_lock: AbstractContextManager | None = None,
        marking: Marker | None = None,
    ) -> None:
        """`unet_lock`: held for each UNet call (a lane beside the main one holds the engine's
        `model_lock`, so that no adapter changes the modules under its call). `marking`: where images
        to watermark are finished (None: here, on this thread)."""
        self.engine = engine
        self.marking = marking
        self.unet_lock = unet_lock if unet_lock is not None else nullcontext()
        self.runs: list[Run] = []
        self.unet_calls = 0

    @property
    def load(self) -> int:
        return sum(run.admitted.count for run in self.runs)

    def step(self) -> list[Outcome]:
        """One denoising step of every run, then the outcome of each run that finished at it: its images
        (or latents for the refiner), or its own error."""
        groups: dict[tuple, list[Run]] = defaultdict(list)  # one pass: a key per run, not per group
        for run in self.runs:
            if not run.finished:
                groups[self.engine.sharing_key(run)].append(run)
        for group in groups.values():
            self.denoise(group)
        done = [run for run in self.runs if run.finished]
        self.runs = [run for run in self.runs if not run.finished]
        return self.outcomes(done)

    def denoise(self, runs: list[Run]) -> None:
        """One UNet call over the runs' rows, each at its own timestep, then each run's own step. If the
        shared call fails, each run is stepped alone: only one that fails alone gets the error."""
        try:
            noise = self.predict_noise(runs)
        except Exception as error:
            if len(runs) == 1:
                runs[0].error = model_error(error)
            else:
                for run in runs:
                    self.denoise([run])
            return
        for run, prediction in zip(runs, noise, strict=True):
            try:
                self.scheduler_step(run, prediction)
            except Exception as error:
                run.error = request_error(error)

    def predict_noise(self, runs: list[Run]) -> list[torch.Tensor]:
        """The noise prediction of each run's rows, from one UNet call."""
        inputs, timesteps = [], []
        for run in runs:
            t = run.timesteps[run.step]
            latents = torch.cat([run.latents] * 2) if run.guided else run.latents
            inputs.append(run.scheduler.scale_model_input(latents, t))
            timesteps.append(t.expand(latents.shape[0]))
        with self.unet_lock, self.engine.adapters_acting(runs, [len(rows) for rows in inputs]):
            noise = self.engine.unet(
                torch.cat(inputs),
                torch.cat(timesteps).to(torch.float32),  # one dtype whatever the schedulers: no recompiles
                torch.cat([run.prompt_embeds for run in runs]),
                torch.cat([run.text_embeds for run in runs]),
                torch.cat([run.time_ids for run in runs]),
            )
        self.unet_calls += 1
        images = sum(run.admitted.count for run in runs)
        for run in runs:
            run.unet_calls += 1
            run.largest_batch = max(run.largest_batch, images)
        return list(noise.split([len(rows) for rows in inputs]))

    def scheduler_step(self, run: Run, noise: torch.Tensor) -> None:
        """The run's guidance, rescale and scheduler step, its inpainting blend, then its step end."""
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
        end_step(run, self.engine.pipeline, t)
        run.step += 1

    def outcomes(self, done: list[Run]) -> list[Outcome]:
        """The finished runs' outcomes: the images of those to decode, decoded together by shape.
        A run whose images are to be watermarked goes to `marking`: its outcome comes from there."""
        to_decode = [run for run in done if run.error is None and not run.request.wants_refiner]
        marked = [run.request.apply_watermark for run in to_decode]
        images = decode_together(self.engine.decoder, [run.latents for run in to_decode], marked)
        decoded = {id(run): rows for run, rows in zip(to_decode, images, strict=True)}
        outcomes = []
        for run in done:
            images = decoded.get(id(run))
            if self.marking is not None and isinstance(images, Decoded) and images.pending:
                finish = lambda run=run, images=images: self.outcome(run, images)  # noqa: E731
                self.marking.submit(run.admitted.submitted, run.admitted.count, finish)
            else:
                outcomes.append((run.admitted.submitted, self.outcome(run, images)))
        return outcomes

    def outcome(self, run: Run, images: Decoded | LeapRayError | None) -> SDXLResult | LeapRayError:
        if run.error is not None:
            return run.error
        if isinstance(images, LeapRayError):
            return images
        pixels = images.images() if images is not None else []  # the refiner's: latents, no images
        return run.result(pixels, self.engine.timings(run))
