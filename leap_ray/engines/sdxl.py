"""The SDXL engine: plain Python, no Ray. It runs a batch of validated requests from different users
and gives each image exactly what a solo diffusers call with that request would give.

How a batch is run:
- Requests that must agree on call-level parameters (size, steps, scheduler, micro-conditioning, ...)
  are grouped; each group is one pipeline call.
- Prompts are encoded per request, exactly as a solo call encodes them, and the embeddings are
  concatenated, so requests with and without negative prompts or embeddings can share a call.
- Every image gets its own CPU `torch.Generator` (seed + j); its initial noise is drawn from it as the
  pipeline would, and the scheduler's per-image noise comes from it too.
- guidance_scale is passed as a per-image tensor; the pipeline subclass below turns guidance on when
  any image needs it, so requests with different scales still share a call.
- callback_on_step_end is fanned out: each request's callback sees only its rows of the tensors and
  may stop only its own request (its latents are then frozen as a solo interrupted call leaves them).

Failures stay with their request (the `Engine` contract, leap_ray.engines.contract): a callback that
raises or returns what diffusers could not apply fails its request (422, callback_error) and freezes
its rows; a fault while encoding one request's prompts or drawing its noise fails that request; a
fault of a shared pipeline call (out of memory for the batch, or one request's rows) reruns the
group one request at a time, and only a request that faults alone fails (ModelError).
"""

import base64
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils.torch_utils import randn_tensor

from leap_ray.api.common import draw_seed
from leap_ray.api.images import encode_image
from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import CALLBACK_TENSOR_INPUTS, SDXLModelSpec, SDXLRequest, seeds_for
from leap_ray.engines.device import placement
from leap_ray.engines.failures import blame, collect_results, internal_error, request_error, run_shared
from leap_ray.engines.sdxl_fast import LatentDecoder, SDXLSpeed, UNetRunner
from leap_ray.engines.sdxl_images import PipelineView, part_image_latents
from leap_ray.engines.sdxl_lora import LoraAdapters
from leap_ray.errors import InvalidRequest, LeapRayError

SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
# The diffusers pipeline of each workflow other than text2img, made from the loaded one (`from_pipe`).
WORKFLOW_PIPELINES = {
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}


def own_scheduler(loaded: DiffusionPipeline, name: str | None) -> Any:
    """A scheduler instance of one's own (schedulers hold state): the named one, or one like the loaded
    pipeline's, with its configuration."""
    scheduler_class = SCHEDULER_CLASSES[name] if name else type(loaded.scheduler)
    return scheduler_class.from_config(loaded.scheduler.config)


def derived_pipeline(loaded: DiffusionPipeline, pipeline_class: type, scheduler: str | None) -> Any:
    """A `pipeline_class` sharing `loaded`'s modules, with a scheduler of its own (`own_scheduler`)."""
    pipeline = pipeline_class.from_pipe(loaded, scheduler=own_scheduler(loaded, scheduler))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class PerImageGuidancePipeline(StableDiffusionXLPipeline):
    """SDXL whose guidance_scale may be a (images, 1, 1, 1) tensor: guidance is on when any image
    needs it. The stock property compares a scalar, which a tensor cannot answer."""

    @property
    def do_classifier_free_guidance(self) -> bool:
        scale = torch.as_tensor(self._guidance_scale)
        return bool((scale > 1).any()) and self.unet.config.time_cond_proj_dim is None


@dataclass
class SDXLResult:
    """One request's images as float arrays (height, width, 3) in [0, 1], with their seeds; or, for a
    request the refiner finishes, its latents where the base stopped and its generators' states (the
    refiner goes on with the same generators, as one process calling both pipelines would)."""

    images: list[np.ndarray]
    seeds: list[int]
    timings: dict[str, float]
    batch_size: int
    stopped_at_step: int | None = None
    latents: torch.Tensor | None = None
    generator_states: list[torch.Tensor] | None = None


def finished(member: "_Member", images: Any, timings: dict[str, float], batch_size: int) -> SDXLResult:
    """A member's result from its call's output rows: images, or latents for the refiner."""
    result = SDXLResult(
        images=[],
        seeds=member.seeds,
        timings=timings,
        batch_size=batch_size,
        stopped_at_step=member.stopped_at_step,
    )
    if member.request.wants_refiner:
        result.latents = torch.as_tensor(images).detach().cpu()
        result.generator_states = [generator.get_state() for generator in member.generators]
    else:
        result.images = list(images)
    return result


@dataclass
class _Member:
    """A request inside a pipeline call: its rows, its generators, its step-end state and its outcome."""

    request: SDXLRequest
    seeds: list[int]
    start: int
    should_stop: Callable[[], bool] | None
    progress: Callable[[StepProgress], None] | None = None
    encode_s: float = 0.0
    embeds: tuple[torch.Tensor | None, ...] = ()
    stopped_at_step: int | None = None
    frozen_latents: torch.Tensor | None = None
    generators: list[torch.Generator] = field(default_factory=list)
    result: SDXLResult | None = None
    error: LeapRayError | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)

    def checkpoint(self) -> None:
        """Nothing to keep: a call starts from the request and its seeds (generators are re-created)."""

    def rewind(self) -> None:
        self.stopped_at_step, self.frozen_latents, self.result = None, None, None


class _RequestPipelineView(PipelineView):
    """What a request's callback sees as `pipeline`: the real pipeline, but with this request's
    guidance scale, and an `_interrupt` flag that stops this request only."""

    def __init__(self, pipeline: StableDiffusionXLPipeline, guidance_scale: float) -> None:
        super().__init__(pipeline, _guidance_scale=guidance_scale, _interrupt=False)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def interrupt(self) -> bool:
        return self._interrupt


def _callback_error(message: str) -> InvalidRequest:
    return InvalidRequest(
        f"callback_on_step_end {message}", param="callback_on_step_end", code="callback_error"
    )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


class _StepFanOut:
    """The one callback_on_step_end of a batched call: runs each request's own callback on its
    rows, keeps stopped requests' latents frozen, and interrupts the call when all have stopped.
    A request whose callback (or hook) fails is frozen like a stopped one and gets the error, so
    its rows no longer change and its batch-mates run on as if it had behaved."""

    def __init__(self, members: list[_Member], images: int) -> None:
        self.members = members
        self.images = images

    def rows(self, tensor: torch.Tensor, member: _Member) -> torch.Tensor:
        start, end = member.start, member.start + member.count
        if tensor.shape[0] == 2 * self.images:  # guidance doubles rows: [unconditional; conditional]
            return torch.cat([tensor[start:end], tensor[self.images + start : self.images + end]])
        return tensor[start:end]

    def write(self, tensor: torch.Tensor, member: _Member, value: torch.Tensor) -> None:
        start, end = member.start, member.start + member.count
        value = value.to(tensor.device, tensor.dtype)
        if tensor.shape[0] == 2 * self.images:
            tensor[start:end] = value[: member.count]
            tensor[self.images + start : self.images + end] = value[member.count :]
        else:
            tensor[start:end] = value

    def __call__(
        self, pipeline: StableDiffusionXLPipeline, step: int, timestep: torch.Tensor, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        for member in self.members:
            if member.stopped_at_step is not None:
                self.write(tensors["latents"], member, member.frozen_latents)
                continue
            try:
                self._step_end(member, pipeline, step, timestep, tensors)
            except Exception as error:
                member.error = error if isinstance(error, LeapRayError) else internal_error(error)
                self._freeze(member, step, tensors)
        if all(member.stopped_at_step is not None for member in self.members):
            pipeline._interrupt = True
        return tensors

    def _step_end(
        self,
        member: _Member,
        pipeline: StableDiffusionXLPipeline,
        step: int,
        timestep: torch.Tensor,
        tensors: dict,
    ) -> None:
        """The member's callback, then its stop check, then its progress event."""
        stop = False
        if member.request.callback_on_step_end is not None:
            stop = self._callback(member, pipeline, step, timestep, tensors)
        if stop or (member.should_stop is not None and member.should_stop()):
            self._freeze(member, step, tensors)
        elif member.progress is not None:
            every = member.request.preview_every
            preview = None
            if every and (step + 1) % every == 0:
                preview = latent_preview(self.rows(tensors["latents"], member)[0])
            member.progress(StepProgress(step + 1, pipeline.num_timesteps, float(timestep), preview))

    def _callback(
        self,
        member: _Member,
        pipeline: StableDiffusionXLPipeline,
        step: int,
        timestep: torch.Tensor,
        tensors: dict,
    ) -> bool:
        """Runs the request's callback on its rows and writes back what it returned; True when the
        callback stopped its request. Raises InvalidRequest (callback_error) when the callback fails."""
        request = member.request
        view = _RequestPipelineView(pipeline, request.guidance_scale)
        own = {name: self.rows(tensors[name], member) for name in request.callback_on_step_end_tensor_inputs}
        try:
            returned = request.callback_on_step_end(view, step, timestep, own)
        except Exception as error:
            raise _callback_error(f"raised {type(error).__name__} at step {step}: {error}") from error
        for name, value in self._checked(returned, member, tensors).items():
            self.write(tensors[name], member, value)
        return view.interrupt

    def _checked(self, returned: object, member: _Member, tensors: dict) -> dict[str, torch.Tensor]:
        """What a callback returned, as diffusers applies it: by name, for any of the pipeline's callback
        tensors whether the callback listed it or not (so `tensors` holds them all), each of the shape
        and dtype of this request's rows. Nothing is written unless all of it is good."""
        if returned is None:
            return {}
        if not isinstance(returned, dict):
            raise _callback_error(f"returned {_describe(returned)}, not a dict of tensors")
        checked = {}
        for name in (name for name in tensors if name in returned):
            value, rows = returned[name], self.rows(tensors[name], member)
            if not isinstance(value, torch.Tensor) or value.shape != rows.shape or value.dtype != rows.dtype:
                raise _callback_error(f"returned {name} as {_describe(value)}, not {_describe(rows)}")
            checked[name] = value
        return checked

    def _freeze(self, member: _Member, step: int, tensors: dict) -> None:
        member.stopped_at_step = step
        member.frozen_latents = self.rows(tensors["latents"], member).clone()


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


class SDXLEngine:
    """Loads an SDXL pipeline (model id or local folder) and generates batches of requests; an
    `Engine` (leap_ray.engines.contract)."""

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
        **speed: Any,
    ) -> None:
        """`loras`: adapter name -> source (hub id, folder, tiny:<name>), loaded on first use, at most
        `max_loaded_loras` at once; with `per_row_adapters`, requests with different adapters share the
        step batch's UNet calls (else a call per adapter set). `speed`: the fast-path options
        (`SDXLSpeed`: compile, batch_buckets, channels_last, fuse_qkv, warm_up_sizes); they act under
        step batching."""
        self.device, self.dtype = placement(device, dtype, threads)
        self.model = model
        self.speed = SDXLSpeed(**speed)
        if loras and self.speed.fuse_qkv:  # fused projections would bypass the adapters' q, k, v layers
            raise ValueError("LoRA adapters need the separate q, k, v projections: set fuse_qkv false")
        if loras and self.speed.compile_kwargs is not None:  # every adapter set and scale recompiles
            raise ValueError("LoRA adapters change the compiled UNet at every request: set compile false")
        self._default = PerImageGuidancePipeline.from_pretrained(model, dtype=self.dtype).to(self.device)
        self._default.set_progress_bar_config(disable=True)
        self.speed.apply(self._default)
        self.unet = UNetRunner(self._default.unet, self.speed)
        self.decoder = LatentDecoder(self._default, self.speed)
        self._pipelines: dict[tuple[str, str | None], StableDiffusionXLPipeline] = {
            ("text2img", None): self._default
        }
        self.adapters = LoraAdapters(self._default, loras or {}, max_loaded_loras)
        self.per_row_adapters = per_row_adapters

    def spec(self) -> SDXLModelSpec:
        pipeline = self._default
        return SDXLModelSpec(
            latent_channels=pipeline.unet.config.in_channels,
            vae_scale_factor=pipeline.vae_scale_factor,
            text_embed_width=pipeline.unet.config.cross_attention_dim,
            pooled_embed_width=pipeline.text_encoder_2.config.projection_dim,
            text_tokens=pipeline.tokenizer_2.model_max_length,
            loras=self.adapters.names(),
            refiner=True,  # it hands latents over; the deployment says whether a refiner takes them
        )

    def pipeline_for(self, workflow: str, scheduler: str | None) -> StableDiffusionXLPipeline:
        """The workflow's pipeline (text2img, img2img, inpaint), sharing the loaded modules, with its
        own scheduler instance (schedulers hold state)."""
        key = (workflow, scheduler)
        if key not in self._pipelines:
            pipeline_class = WORKFLOW_PIPELINES.get(workflow, PerImageGuidancePipeline)
            self._pipelines[key] = derived_pipeline(self._default, pipeline_class, scheduler)
        return self._pipelines[key]

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[SDXLRequest],
        should_stop: Sequence[Callable[[], bool] | None] | None = None,
        progress: Sequence[Callable[[StepProgress], None] | None] | None = None,
    ) -> list[SDXLResult | LeapRayError]:
        """Runs the batch under the `Engine` contract (leap_ray.engines.contract): each entry is the
        request's result, or the error that request alone met. `should_stop[i]`, checked after every
        denoising step, lets request i leave its call early; `progress[i]` is told a StepProgress (with a
        preview every `preview_every` steps) after each of request i's steps."""
        return collect_results(
            len(requests), lambda results: self._generate(requests, should_stop, progress, results)
        )

    def _generate(
        self,
        requests: Sequence[SDXLRequest],
        should_stop: Sequence[Callable[[], bool] | None] | None,
        progress: Sequence[Callable[[StepProgress], None] | None] | None,
        results: list[SDXLResult | LeapRayError | None],
    ) -> None:
        spec = self.spec()
        admitted: dict[int, _Member] = {}
        for index, request in enumerate(requests):
            hooks = (should_stop[index] if should_stop else None, progress[index] if progress else None)
            try:
                admitted[index] = self._admit(request, spec, *hooks)
            except Exception as error:
                results[index] = request_error(error)
        # Each alone here: a request rerun alone after a shared fault then gives exactly its solo images.
        self.encode_all(list(admitted.values()), together=False)
        groups: dict[tuple, list[tuple[int, _Member]]] = defaultdict(list)
        for index, member in admitted.items():
            if member.error is not None:
                results[index] = member.error
            else:
                groups[self._group_key(index, member)].append((index, member))
        for group in groups.values():
            run_shared([member for _, member in group], self._run_group)
            for index, member in group:
                results[index] = member.error if member.error is not None else member.result

    def _admit(
        self,
        request: SDXLRequest,
        spec: SDXLModelSpec,
        should_stop: Callable[[], bool] | None,
        progress: Callable[[StepProgress], None] | None,
        in_use: Iterable[str] = (),
    ) -> _Member:
        """The request checked against the model, its adapters loaded (never unloading those `in_use`
        by running requests) and seeded; raises its error. Both batching modes take requests here."""
        request.check_against(spec)
        self.adapters.ensure_loaded((name for name, _ in request.lora_scales()), in_use)
        seed = request.seed if request.seed is not None else draw_seed()
        return _Member(
            request=request,
            seeds=seeds_for(request, seed),
            start=0,
            should_stop=should_stop,
            progress=progress,
        )

    def encode_all(self, members: list[_Member], together: bool = True) -> None:
        """Encodes the members' prompts: with `together`, plain-text prompts that can share a
        text-encoder call (the same guidance, negative prompts or none) in one, the rest alone, each
        as a solo call would encode it (to the rounding of batched arithmetic). A member whose
        encoding fails alone gets the error (prompts are validated text or embeddings of checked
        shapes: the fault is the model's)."""
        groups: dict[tuple, list[_Member]] = defaultdict(list)
        for member in members:
            groups[self._encoding_key(member) if together else ("alone", id(member))].append(member)
        for group in groups.values():
            run_shared(group, self._encode_group)

    @staticmethod
    def _encoding_key(member: _Member) -> tuple:
        texts = member.request.prompt_texts()
        if texts is None or (texts["negative_prompt"] is None) != (texts["negative_prompt_2"] is None):
            return ("alone", id(member))
        request = member.request
        return (request.guidance_is_on(), texts["negative_prompt"] is None, request.lora_scales())

    def _encode_group(self, members: list[_Member]) -> None:
        self.adapters.activate_text_encoders(members[0].request.lora_scales())  # LoRAs' text layers
        if len(members) == 1:
            self._encode(members[0])
            return
        started = time.perf_counter()
        texts = [member.request.prompt_texts() for member in members]
        joined = {
            name: None if texts[0][name] is None else [text for each in texts for text in each[name]]
            for name in texts[0]
        }
        embeds = self._default.encode_prompt(
            **joined,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=members[0].request.guidance_is_on(),
        )
        counts = [member.request.prompt_count for member in members]
        parts = [[None] * len(members) if tensor is None else tensor.split(counts) for tensor in embeds]
        for index, member in enumerate(members):
            images = member.request.num_images_per_prompt
            member.embeds = tuple(
                None if part[index] is None else part[index].repeat_interleave(images, dim=0)
                for part in parts
            )
            member.encode_s = time.perf_counter() - started

    def _encode(self, member: _Member) -> None:
        """Encodes one request's prompts exactly as a solo pipeline call would."""
        started = time.perf_counter()
        request = member.request
        kwargs = request.to_pipeline_kwargs()
        member.embeds = self._default.encode_prompt(
            prompt=kwargs["prompt"],
            prompt_2=kwargs["prompt_2"],
            device=self.device,
            num_images_per_prompt=request.num_images_per_prompt,
            do_classifier_free_guidance=request.guidance_is_on(),
            negative_prompt=kwargs["negative_prompt"],
            negative_prompt_2=kwargs["negative_prompt_2"],
            prompt_embeds=_on(request.prompt_embeds, self.device, self.dtype),
            negative_prompt_embeds=_on(request.negative_prompt_embeds, self.device, self.dtype),
            pooled_prompt_embeds=_on(request.pooled_prompt_embeds, self.device, self.dtype),
            negative_pooled_prompt_embeds=_on(request.negative_pooled_prompt_embeds, self.device, self.dtype),
        )
        member.encode_s = time.perf_counter() - started

    @staticmethod
    def _group_key(index: int, member: _Member) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        request = member.request
        conditioning, negative = request.micro_conditioning()
        # With negative micro-conditioning, diffusers lays out time ids as [negative, positive] pairs
        # per image, so an image's ids depend on its position in the call: such requests run alone,
        # as do img2img and inpainting requests (their own diffusers pipeline call, with their image).
        alone = negative is not None or request.workflow != "text2img"
        return (
            (request.height, request.width),
            request.num_inference_steps,
            request.scheduler,
            request.eta,
            request.denoising_end,
            request.guidance_is_on(),
            request.guidance_rescale,
            conditioning,
            member.embeds[0].shape[1],  # token count of the text embeddings
            request.lora_scales(),
            request.wants_refiner,
            index if alone else None,
        )

    def _initial_latents(self, member: _Member, pipeline: PerImageGuidancePipeline) -> torch.Tensor:
        request = member.request
        if request.latents is not None:
            with blame("latents"):
                return request.latents.to(self.device, self.dtype)
        shape = (
            1,
            pipeline.unet.config.in_channels,
            request.height // pipeline.vae_scale_factor,
            request.width // pipeline.vae_scale_factor,
        )
        # One draw per image from its own generator, as the pipeline's prepare_latents does.
        return torch.cat(
            [
                randn_tensor(shape, generator=g, device=self.device, dtype=self.dtype)
                for g in member.generators
            ]
        )

    def _run_group(self, members: list[_Member]) -> None:
        """One pipeline call for the members whose initial latents could be drawn; each member gets
        its result, or its own error. A fault of the call itself is raised (see `run_shared`)."""
        started = time.perf_counter()
        first = members[0].request
        self.adapters.activate(first.lora_scales())
        pipeline = self.pipeline_for(first.workflow, first.scheduler)
        try:
            if first.workflow == "text2img":
                self._call_text2img(pipeline, members, started)
            else:
                self._call_image(pipeline, members[0], started)
        except Exception:
            # diffusers upcasts a float16 VAE to decode and casts it back only when decoding succeeds:
            # undo it, or every later call would hand float16 latents to a float32 VAE and fail.
            pipeline.vae.to(dtype=self.dtype)
            raise

    def _call_text2img(
        self, pipeline: StableDiffusionXLPipeline, members: list[_Member], started: float
    ) -> None:
        ready, latents = [], []
        for member in members:
            # Fresh generators on every call, so that a rerun draws exactly what a solo call draws.
            member.generators = [torch.Generator().manual_seed(seed) for seed in member.seeds]
            try:
                latents.append(self._initial_latents(member, pipeline))
            except Exception as error:
                member.error = request_error(error)
                continue
            ready.append(member)
        if ready:
            self._call(pipeline, ready, started, latents=torch.cat(latents))

    def _call_image(self, pipeline: StableDiffusionXLPipeline, member: _Member, started: float) -> None:
        """An img2img or inpainting request: its own call of diffusers' pipeline for the workflow."""
        request = member.request
        member.generators = [torch.Generator().manual_seed(seed) for seed in member.seeds]
        arguments: dict[str, Any] = {"image": request.image, "strength": request.effective_strength()}
        if request.workflow == "inpaint":
            arguments["mask_image"] = request.mask_image
            if (encoded := part_image_latents(pipeline, request, self.device, self.dtype)) is not None:
                arguments["image"] = encoded
        self._call(pipeline, [member], started, **arguments)

    def _call(
        self, pipeline: StableDiffusionXLPipeline, members: list[_Member], started: float, **inputs: Any
    ) -> None:
        """One pipeline call over the members' rows (`inputs`: the starting latents or image)."""
        images = 0
        for member in members:
            member.start = images
            images += member.count
        first = members[0].request
        guidance_on = first.guidance_is_on()
        scales = {member.request.guidance_scale for member in members}
        guidance: float | torch.Tensor = first.guidance_scale
        if guidance_on and len(scales) > 1:
            per_image = [member.request.guidance_scale for member in members for _ in range(member.count)]
            guidance = torch.tensor(per_image, device=self.device, dtype=self.dtype).view(-1, 1, 1, 1)
        prompt_embeds, negative_embeds, pooled, negative_pooled = (
            torch.cat([member.embeds[i] for member in members]) if guidance_on or i in (0, 2) else None
            for i in range(4)
        )
        call_kwargs = first.call_kwargs()
        if first.workflow == "img2img":  # it keeps the image's size; it takes no height and width
            del call_kwargs["height"], call_kwargs["width"]
        needs_fan_out = any(m.request.callback_on_step_end or m.should_stop or m.progress for m in members)
        output = pipeline(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            generator=[g for member in members for g in member.generators],
            guidance_scale=guidance,
            num_images_per_prompt=1,
            output_type="latent" if first.wants_refiner else "np",
            callback_on_step_end=_StepFanOut(members, images) if needs_fan_out else None,
            # All the tensors the fan-out can hand on, whatever each callback listed: diffusers applies
            # a callback's returned tensors by name, listed or not, so it must be able to write any.
            callback_on_step_end_tensor_inputs=[
                name for name in pipeline._callback_tensor_inputs if name in CALLBACK_TENSOR_INPUTS
            ],
            **inputs,
            **call_kwargs,
        )
        call_s = time.perf_counter() - started
        for member in members:
            if member.error is None:
                rows = output.images[member.start : member.start + member.count]
                timings = {"encode_s": member.encode_s, "generate_s": call_s}
                member.result = finished(member, rows, timings, images)


def _on(tensor: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device, dtype)
