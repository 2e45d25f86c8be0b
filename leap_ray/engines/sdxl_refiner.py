"""The SDXL refiner engine: plain Python, no Ray. It finishes the latents the base model stopped at
(`denoising_end`), diffusers' "ensemble of expert denoisers": what `StableDiffusionXLImg2ImgPipeline`
with the refiner's weights does when called with `image=latents` and `denoising_start`, with the
request's generators restored to where the base left them, so the images equal one process calling
both pipelines with the same generators. An inpainting is refined as diffusers documents it: the
refiner's weights in the inpainting pipeline, with the request's image and mask.

Refinements run in a step batch of their own (`sdxl_steps.StepBatch`, as the base's requests do):
they join at any step, and those of one latent shape share each UNet call, whatever their settings."""

import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps

from leap_ray.api.handoff import RefineRequest, RefinerSpec
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.contract import ProgressHook, StopCheck
from leap_ray.engines.device import placement
from leap_ray.engines.sdxl_decode import LatentDecoder
from leap_ray.engines.sdxl_fast import SDXLSpeed, UNetRunner
from leap_ray.engines.sdxl_images import refine_start
from leap_ray.engines.sdxl_pipelines import WorkflowPipelines, own_scheduler
from leap_ray.engines.sdxl_prompts import PromptEncoder
from leap_ray.engines.sdxl_runs import Admitted, Run, image_time_ids, start_run
from leap_ray.engines.sdxl_steps import OWN_LANE_ABOVE, StepBatch
from leap_ray.engines.sdxl_warm_up import warm_up


class SDXLRefinerEngine:
    """Loads the refiner (model id or local folder); an `Engine` (leap_ray.engines.contract) of
    `RefineRequest`s and the `Denoiser` its step batch runs."""

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        own_lane_above: int | None = OWN_LANE_ABOVE,
        watermark: bool = True,
        **speed: Any,
    ) -> None:
        """`own_lane_above`, `watermark` and `speed` (the fast-path options): as the base engine's
        (`SDXLEngine`). The refiner decodes the images, so it is the one that marks them (diffusers'
        base pipeline marks nothing it hands on as latents)."""
        self.device, self.dtype = placement(device, dtype, threads)
        self.model = model
        self.own_lane_above = own_lane_above
        self.model_lock = threading.RLock()  # nothing changes the refiner's modules: never contended
        self.encoding = threading.Lock()
        pipeline = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            model, dtype=self.dtype, add_watermarker=False
        ).to(self.device)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self.speed = SDXLSpeed(**speed)
        self.speed.apply(pipeline)
        self.pipelines = WorkflowPipelines(pipeline)
        self.unet = UNetRunner(pipeline.unet, self.speed)
        self.decoder = LatentDecoder(pipeline, self.speed, watermark)
        self.prompts = PromptEncoder(pipeline, self.device, self.dtype)
        # As the base's: the smallest bucket compiles here, the others on `compiling`.
        self.compiling = warm_up(self, "refiner", self.warm_up_requests)

    def warm_up_requests(self, height: int, width: int, images: int) -> list[RefineRequest]:
        """Hand-offs of one refiner step each, `images` in all, at one size: they compile its shapes."""
        scale = self.pipeline.vae_scale_factor
        shape = (1, self.spec().latent_channels, height // scale, width // scale)
        request = SDXLRequest(prompt="warm-up", height=height, width=width, num_inference_steps=2, refiner={})
        state = [torch.Generator().manual_seed(seed).get_state() for seed in range(images)]
        return [RefineRequest(request, torch.zeros(shape), state[i : i + 1], [i], {}) for i in range(images)]

    def spec(self) -> RefinerSpec:
        return RefinerSpec(latent_channels=self.pipeline.unet.config.in_channels)

    def running_batch(self, max_load: int = 8) -> StepBatch:
        return StepBatch(self, max_load)

    def admit(
        self, job: RefineRequest, should_stop: StopCheck | None, progress: ProgressHook | None, in_use: Any
    ) -> Admitted:
        """The hand-off as a request of the refiner's own: the base's, without what acted in the base
        stage alone (its callback, its adapters)."""
        request = job.request.model_copy(update={"refiner": None, "callback_on_step_end": None, "loras": []})
        return Admitted(request, job.seeds, should_stop, progress, handoff=job)

    def can_join(self, job: RefineRequest, in_use: set[str]) -> bool:
        return True

    def start(self, admitted: Admitted) -> Run:
        """The refinement's run: its own scheduler, the timesteps after `denoising_start`, the base's
        latents, and the refiner's added time ids (with the aesthetic scores)."""
        job = admitted.handoff
        options, generators = job.request.refiner_kwargs(), admitted.generators()
        scheduler = own_scheduler(self.pipeline, job.request.scheduler)
        retrieve_timesteps(scheduler, options["num_inference_steps"], self.device)  # refine_start cuts it
        pipeline = self.pipelines.for_workflow(job.request.workflow)
        with self.encoding:  # as the base engine's: an inpainting's start encodes with the shared VAE
            start = refine_start(
                pipeline, scheduler, job.request, job.latents, generators, self.device, self.dtype
            )
        aesthetic = (options["aesthetic_score"], options["negative_aesthetic_score"])
        time_ids = image_time_ids(pipeline, job.request, admitted.embeds[2].dtype, aesthetic)
        return start_run(admitted, scheduler, generators, start, time_ids, paired_time_ids=False)

    @staticmethod
    def sharing_key(run: Run) -> tuple:
        return (*run.latents.shape[1:], run.prompt_embeds.shape[1])

    @staticmethod
    def adapters_acting(runs: list[Run], rows: list[int]) -> AbstractContextManager:
        return nullcontext()  # the refiner serves no adapters

    @staticmethod
    def timings(run: Run) -> dict[str, float]:
        """The base stage's timings, and the refiner's whole stage (its prompt encoding included)."""
        return run.admitted.handoff.timings | {"refine_s": run.admitted.encode_s + run.elapsed()}
