"""The SDXL engine: plain Python, no Ray. It loads the base pipeline and makes the replica's running
batch (`sdxl_steps.StepBatch`), in which each image equals what a solo diffusers call with its
request gives.

The engine's core, each part in its own module:
- sdxl_pipelines: the workflows' pipelines and a request's own scheduler;
- sdxl_prompts: prompt encoding, shared by requests that join at one step;
- sdxl_runs and sdxl_images: admission (seeds, adapters) and how a run starts (initial latents,
  timesteps, added time ids) for text2img, img2img, inpainting and the refiner;
- sdxl_steps and sdxl_step_end: the step batch, and each request's callback, stop check and progress;
- sdxl_decode: decoding and previews; sdxl_fast: the GPU fast path (compile, buckets); sdxl_warm_up:
  compiling as a replica starts, with the compile cache;
- sdxl_lora and sdxl_lora_rows: LoRA adapters, per row of a UNet call.

Failures stay with their request (the `RunningBatch` contract, leap_ray.engines.contract)."""

import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps

from leap_ray.api.common import draw_seed
from leap_ray.api.sdxl import SDXLModelSpec, SDXLRequest, seeds_for
from leap_ray.engines.contract import ProgressHook, StopCheck
from leap_ray.engines.device import placement
from leap_ray.engines.sdxl_decode import LatentDecoder
from leap_ray.engines.sdxl_fast import SDXLSpeed, UNetRunner
from leap_ray.engines.sdxl_images import ImageStart, image_start
from leap_ray.engines.sdxl_lora import LoraAdapters
from leap_ray.engines.sdxl_pipelines import WorkflowPipelines, own_scheduler
from leap_ray.engines.sdxl_prompts import PromptEncoder
from leap_ray.engines.sdxl_runs import (
    Admitted,
    Run,
    image_time_ids,
    initial_latents,
    start_run,
    steps_before_end,
    text_time_ids,
)
from leap_ray.engines.sdxl_steps import OWN_LANE_ABOVE, StepBatch
from leap_ray.engines.sdxl_warm_up import warm_up


class SDXLEngine:
    """Loads an SDXL pipeline (model id or local folder); an `Engine` (leap_ray.engines.contract) and
    the `Denoiser` its step batch runs."""

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        loras: dict[str, str] | None = None,
        max_loaded_loras: int = 4,
        per_row_adapters: bool = True,
        own_lane_above: int | None = OWN_LANE_ABOVE,
        watermark: bool = True,
        **speed: Any,
    ) -> None:
        """`loras`: adapter name -> source (hub id, folder, tiny:<name>), loaded on first use, at most
        `max_loaded_loras` at once; with `per_row_adapters`, requests with different adapters share the
        step batch's UNet calls (else a call per adapter set). `own_lane_above`: images of more pixels
        step in a lane of their own (leap_ray.engines.sdxl_own_lane; None: every image in one lane).
        `watermark`: SDXL's invisible watermark on the images of requests that keep `apply_watermark`
        (on by default, as diffusers' pipelines are where invisible-watermark is installed).
        `speed`: the fast-path options (`SDXLSpeed`: compile, regional_compile, compile_cache,
        batch_buckets, channels_last, fuse_qkv, warm_up_sizes)."""
        self.device, self.dtype = placement(device, dtype, threads)
        self.model = model
        self.speed = SDXLSpeed(**speed)
        if loras and self.speed.fuse_qkv:  # fused projections would bypass the adapters' q, k, v layers
            raise ValueError("LoRA adapters need the separate q, k, v projections: set fuse_qkv false")
        if loras and self.speed.compile_kwargs is not None:  # every adapter set and scale recompiles
            raise ValueError("LoRA adapters change the compiled UNet at every request: set compile false")
        # The decoder owns the watermark (per request); the pipeline's own would mark every image.
        self.pipeline = StableDiffusionXLPipeline.from_pretrained(
            model, dtype=self.dtype, add_watermarker=False
        ).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.speed.apply(self.pipeline)
        self.pipelines = WorkflowPipelines(self.pipeline)
        self.unet = UNetRunner(self.pipeline.unet, self.speed)
        self.decoder = LatentDecoder(self.pipeline, self.speed, watermark)
        self.adapters = LoraAdapters(self.pipeline, loras or {}, max_loaded_loras)
        self.per_row_adapters = per_row_adapters
        # Adapters switched per request set change the UNet for every call: one lane only.
        self.own_lane_above = own_lane_above if per_row_adapters or not loras else None
        self.model_lock = self.adapters.lock
        # diffusers' image preparation casts the shared VAE up and back (float16 with force_upcast) as it
        # encodes: one image start at a time, whichever lane it is in.
        self.encoding = threading.Lock()
        self.prompts = PromptEncoder(
            self.pipeline, self.device, self.dtype, self.adapters.activate_text_encoders
        )
        # No request pays for compiling: the smallest bucket compiles here, the others on `compiling`.
        self.compiling = warm_up(self, "sdxl", warm_up_requests)

    def spec(self) -> SDXLModelSpec:
        pipeline = self.pipeline
        return SDXLModelSpec(
            latent_channels=pipeline.unet.config.in_channels,
            vae_scale_factor=pipeline.vae_scale_factor,
            text_embed_width=pipeline.unet.config.cross_attention_dim,
            pooled_embed_width=pipeline.text_encoder_2.config.projection_dim,
            text_tokens=pipeline.tokenizer_2.model_max_length,
            loras=self.adapters.names(),
            native_size=pipeline.default_sample_size * pipeline.vae_scale_factor,
        )

    def running_batch(self, max_load: int = 8) -> StepBatch:
        return StepBatch(self, max_load)

    def admit(
        self,
        request: SDXLRequest,
        should_stop: StopCheck | None,
        progress: ProgressHook | None,
        in_use: Iterable[str] = (),
    ) -> Admitted:
        """The request checked against the model, its adapters loaded (never unloading those `in_use`
        by running requests) and seeded; raises its error."""
        request.check_against(self.spec())
        self.adapters.ensure_loaded((name for name, _ in request.lora_scales()), in_use)
        seed = request.seed if request.seed is not None else draw_seed()
        return Admitted(request, seeds_for(request, seed), should_stop, progress)

    def can_join(self, request: SDXLRequest, in_use: set[str]) -> bool:
        return self.adapters.fits([*in_use, *(name for name, _ in request.lora_scales())])

    def start(self, admitted: Admitted) -> Run:
        """The request's run: its own scheduler and timesteps (cut at `denoising_end`), its starting
        latents (noise, or its image's for img2img and inpainting) and its added time ids."""
        request, generators = admitted.request, admitted.generators()
        scheduler = own_scheduler(self.pipeline, request.scheduler)
        timesteps, _ = retrieve_timesteps(scheduler, request.num_inference_steps, self.device)
        pipeline = self.pipelines.for_workflow(request.workflow)
        if request.workflow == "text2img":
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)
            latents = initial_latents(request, generators, pipeline, self.device, self.dtype)
            start = ImageStart(timesteps, latents * scheduler.init_noise_sigma, None)
            time_ids = text_time_ids(pipeline, request, admitted.embeds[2].dtype)
        else:
            with self.encoding:
                start = image_start(pipeline, scheduler, request, generators, self.device, self.dtype)
            time_ids = image_time_ids(pipeline, request, admitted.embeds[2].dtype)
        start.timesteps = start.timesteps[
            : steps_before_end(scheduler, start.timesteps, request.denoising_end)
        ]
        return start_run(admitted, scheduler, generators, start, time_ids, request.workflow == "text2img")

    def sharing_key(self, run: Run) -> tuple:
        """Runs of one latent shape and text length share a UNet call: whatever their LoRA adapters
        when these act per row, else those of one adapter set."""
        adapters = () if self.per_row_adapters else run.request.lora_scales()
        return (*run.latents.shape[1:], run.prompt_embeds.shape[1], adapters)

    def adapters_acting(self, runs: list[Run], rows: list[int]) -> AbstractContextManager:
        """The runs' LoRA adapters acting in one UNet call: per row, or as their one set."""
        if not self.per_row_adapters:
            self.adapters.activate(runs[0].request.lora_scales())
            return nullcontext()
        row_scales = [
            run.request.lora_scales() for run, count in zip(runs, rows, strict=True) for _ in range(count)
        ]
        return self.adapters.per_row(row_scales, self.device)

    def timings(self, run: Run) -> dict[str, float]:
        return {"encode_s": run.admitted.encode_s, "generate_s": run.elapsed()}


def warm_up_requests(height: int, width: int, images: int) -> list[SDXLRequest]:
    """Requests of one step each, `images` images in all, at one size: they compile its shapes."""
    return [
        SDXLRequest(prompt="warm-up", height=height, width=width, num_inference_steps=1, seed=seed)
        for seed in range(images)
    ]
