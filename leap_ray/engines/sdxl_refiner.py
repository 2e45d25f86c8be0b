"""The SDXL refiner engine: plain Python, no Ray. It finishes the latents the base model stopped at
(`denoising_end`), diffusers' "ensemble of expert denoisers": a `StableDiffusionXLImg2ImgPipeline` with
the refiner's weights, called with `image=latents` and `denoising_start`, and the request's generators
restored to where the base left them, so the images equal one process calling both pipelines with
the same generators. An inpainting is refined as diffusers documents it: the refiner's weights in the
inpainting pipeline, with the request's image and mask.

Requests whose calls agree on everything but their texts (steps, hand-off point, guidance, sizes,
aesthetic scores, sampler) share one pipeline call, their texts listed per image. Failures stay with
their request as in the base engine (`run_shared`); progress and stop checks reach each request
through the base engine's callback fan-out."""

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers import StableDiffusionXLInpaintPipeline as INPAINTING

from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import RefineRequest, SDXLRequest
from leap_ray.engines.device import placement
from leap_ray.engines.failures import collect_results, run_shared
from leap_ray.engines.sdxl import (
    SDXLResult,
    _Member,
    _StepFanOut,
    derived_pipeline,
    finished,
)
from leap_ray.errors import LeapRayError


@dataclass(frozen=True)
class RefinerSpec:
    latent_channels: int


@dataclass
class _Refining(_Member):
    job: RefineRequest | None = None

    def restore_generators(self) -> None:
        """The generators as the base left them (on every call: a rerun starts from there again)."""
        self.generators = []
        for state in self.job.generator_states:
            generator = torch.Generator()
            generator.set_state(state)
            self.generators.append(generator)


class SDXLRefinerEngine:
    """Loads the refiner (model id or local folder) and refines batches of `RefineRequest`s; an `Engine`
    (leap_ray.engines.contract)."""

    def __init__(
        self, model: str, *, device: str | None = None, dtype: str | None = None, threads: int | None = None
    ) -> None:
        self.device, self.dtype = placement(device, dtype, threads)
        self.model = model
        pipeline = StableDiffusionXLImg2ImgPipeline.from_pretrained(model, dtype=self.dtype).to(self.device)
        pipeline.set_progress_bar_config(disable=True)
        self._pipelines: dict[tuple[type, str | None], StableDiffusionXLImg2ImgPipeline] = {
            (StableDiffusionXLImg2ImgPipeline, None): pipeline
        }

    def spec(self) -> RefinerSpec:
        loaded = self._pipelines[(StableDiffusionXLImg2ImgPipeline, None)]
        return RefinerSpec(latent_channels=loaded.unet.config.in_channels)

    def _pipeline_for(self, request: SDXLRequest) -> Any:
        """The refiner as the request's workflow needs it (diffusers refines an inpainting with the
        inpainting pipeline, the image and the mask), with the request's sampler."""
        key = (
            INPAINTING if request.workflow == "inpaint" else StableDiffusionXLImg2ImgPipeline,
            request.scheduler,
        )
        if key not in self._pipelines:
            loaded = self._pipelines[(StableDiffusionXLImg2ImgPipeline, None)]
            self._pipelines[key] = derived_pipeline(loaded, *key)
        return self._pipelines[key]

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[RefineRequest],
        should_stop: Sequence[Callable[[], bool] | None] | None = None,
        progress: Sequence[Callable[[StepProgress], None] | None] | None = None,
    ) -> list[SDXLResult | LeapRayError]:
        return collect_results(
            len(requests), lambda results: self._generate(requests, should_stop, progress, results)
        )

    def _generate(
        self,
        requests: Sequence[RefineRequest],
        should_stop: Sequence[Callable[[], bool] | None] | None,
        progress: Sequence[Callable[[StepProgress], None] | None] | None,
        results: list[SDXLResult | LeapRayError | None],
    ) -> None:
        groups: dict[tuple, list[tuple[int, _Refining]]] = defaultdict(list)
        for index, job in enumerate(requests):
            # The base's request, as the refiner's own: its callback acted in the base stage.
            request = job.request.model_copy(update={"refiner": None, "callback_on_step_end": None})
            member = _Refining(
                request=request,
                seeds=job.seeds,
                start=0,
                should_stop=should_stop[index] if should_stop else None,
                progress=progress[index] if progress else None,
                job=job,
            )
            groups[self._group_key(job)].append((index, member))
        for group in groups.values():
            run_shared([member for _, member in group], self._call)
            for index, member in group:
                results[index] = member.error if member.error is not None else member.result

    @staticmethod
    def _group_key(job: RefineRequest) -> tuple:
        """Jobs with equal keys can share one pipeline call."""
        request = job.request
        shared = request.refiner_kwargs()
        negative = request.negative_prompt is not None
        alone = id(job) if request.workflow == "inpaint" else None  # its own image and mask
        return (tuple(job.latents.shape[1:]), request.scheduler, negative, alone, *sorted(shared.items()))

    def _call(self, members: list[_Refining]) -> None:
        started = time.perf_counter()
        first = members[0].job.request
        pipeline = self._pipeline_for(first)
        inputs = {}
        if first.workflow == "inpaint":
            inputs = {"mask_image": first.mask_image, "height": first.height, "width": first.width}
        texts = _texts_per_image([member.job for member in members])
        images = 0
        for member in members:
            member.start, images = images, images + member.count
            member.restore_generators()
        needs_fan_out = any(member.should_stop or member.progress for member in members)
        output = pipeline(
            **texts,
            image=torch.cat([member.job.latents for member in members]).to(self.device, self.dtype),
            generator=[generator for member in members for generator in member.generators],
            num_images_per_prompt=1,
            output_type="np",
            callback_on_step_end=_StepFanOut(members, images) if needs_fan_out else None,
            **inputs,
            **first.refiner_kwargs(),
        )
        refine_s = time.perf_counter() - started
        for member in members:
            if member.error is None:
                timings = member.job.timings | {"refine_s": refine_s}
                rows = output.images[member.start : member.start + member.count]
                member.result = finished(member, rows, timings, images)


def _texts_per_image(jobs: list[RefineRequest]) -> dict[str, Any]:
    """The jobs' texts, one per image (the refiner reads prompt and negative_prompt with its one text
    encoder). Jobs of one call all have negative prompts or none (the group key says which)."""
    texts: dict[str, list[str] | None] = {"prompt": [], "negative_prompt": []}
    for job in jobs:
        resolved = job.request.prompt_texts() or {}
        for name, per_image in texts.items():
            for text in resolved.get(name) or []:
                per_image += [text] * job.request.num_images_per_prompt
    return {name: per_image or None for name, per_image in texts.items()}
