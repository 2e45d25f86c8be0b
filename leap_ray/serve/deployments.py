"""The model deployments: thin Serve shims over the engines. Each owns a `ModelShim` (the engine, its
batcher, its counters; leap_ray.serve.model_shim) and adds what only Serve gives: its handle methods,
its `user_config` (batching, changeable without a restart) and, for SDXL, LoRA routing by Serve's
multiplexing and the hand-off to the Refiner deployment. Replicas, autoscaling, GPUs, queue limits and
batching come from the Serve config alone (serve_config.yaml, leap_ray/configs/local.yaml), not from
these decorators.

A request bigger than a batch runs as parts (leap_ray.serve.parts); a streaming call reports its
progress through the stream bridge (leap_ray.serve.streams)."""

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from leap_ray.api.handoff import RefineRequest, RefinerSpec
from leap_ray.api.musicgen import MusicGenModelSpec
from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import SDXLModelSpec, SDXLOutput, SDXLRequest
from leap_ray.config import BatchingConfig, ModelSettings, OutputSettings, SDXLSettings
from leap_ray.engines.contract import ProgressHook
from leap_ray.errors import InvalidRequest, ModelError
from leap_ray.serve.model_shim import ModelShim
from leap_ray.serve.outputs import OutputMarker, encode_images, encode_track
from leap_ray.serve.parts import run_in_parts
from leap_ray.serve.streams import events_then_output


class ModelDeployment:
    """What every model deployment answers: `generate`, `generate_stream`, `spec`, `stats`, `capacity`."""

    default_engine: str

    def __init__(self, settings: ModelSettings, outputs: OutputSettings | None = None) -> None:
        # Before the engine loads: a content-credentials signer that does not work fails the start.
        self.marker = OutputMarker(settings.model, outputs)
        self.shim = ModelShim(settings, self.default_engine, self.encode)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.shim.configure(BatchingConfig.model_validate(user_config or {}))

    def spec(self) -> SDXLModelSpec | MusicGenModelSpec | RefinerSpec:
        return self.shim.spec

    def stats(self) -> dict[str, int]:
        return self.shim.stats()

    def capacity(self) -> int:
        """How many requests this replica runs at once: its batch (`max_batch_size`)."""
        return self.shim.batching.max_batch_size

    def check_health(self) -> None:
        """Serve's health check: a replica whose batcher has stopped is replaced."""
        self.shim.check_health()

    async def generate(self, request: Any) -> Any:
        return await self.run(request, None)

    async def generate_stream(self, request: Any) -> AsyncIterator[Any]:
        """Progress events (StepProgress or AudioProgress, and a MusicGen request with `stream` its
        AudioDelta pieces) while the request runs, then its output. Closing the stream cancels it."""
        async for item in events_then_output(lambda progress: self.run(request, progress)):
            yield item

    async def run(self, request: Any, progress: ProgressHook | None) -> Any:
        return await run_in_parts(self.split(request), self.run_part, self.join, progress)

    async def run_part(self, part: Any, progress: ProgressHook | None) -> Any:
        outcome = await self.shim.run(part, progress)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def split(self, request: Any) -> list[Any]:
        """The request as parts that each fit in a batch (most requests are one part)."""
        return [request]

    def join(self, outputs: list[Any]) -> Any:
        """The outputs of a request's parts, in order (only SDXL requests and hand-offs are split)."""
        return SDXLOutput.join(outputs)

    def encode(self, request: Any, result: Any) -> Any:
        raise NotImplementedError


def _adapter_set_holder() -> Callable[[str], Any]:
    async def adapter_set(adapter_set: str) -> str:
        """What Serve's multiplexing tracks per replica: the adapter sets it has served. The engine
        loads the adapters themselves, on its own thread, when the request is admitted."""
        return adapter_set

    return adapter_set


def _staged(progress: ProgressHook, stage: str) -> ProgressHook:
    """A progress hook that marks each event with its stage (base or refiner)."""
    return lambda event: progress(replace(event, stage=stage))


@serve.deployment(name="SDXL")
class SDXLDeployment(ModelDeployment):
    """The SDXL base. A request for the refiner runs here to its `denoising_end`; its latents and
    generator states then go to the Refiner deployment through its handle (Ray's object store), and
    its answer is the refiner's. Requests naming LoRA adapters come with Serve's multiplexed model id
    (their adapter set), so Serve routes them to replicas that already hold those adapters."""

    default_engine = "leap_ray.engines.sdxl:SDXLEngine"

    def __init__(
        self,
        settings: SDXLSettings,
        refiner: DeploymentHandle | None = None,
        outputs: OutputSettings | None = None,
    ) -> None:
        super().__init__(settings, outputs)
        self.refiner = refiner
        # What the graph offers, and the steps the operator (or the tiny model) suggests.
        self.shim.spec = replace(
            self.shim.spec, refiner=refiner is not None, suggested_steps=settings.suggested()
        )
        # Wired here, not by decorator, since the bound comes from the config; Serve keeps its state on
        # the function, so each replica gets its own.
        self._hold_adapters = serve.multiplexed(max_num_models_per_replica=settings.max_loaded_loras)(
            _adapter_set_holder()
        )

    def stats(self) -> dict[str, int]:
        """The model deployment's counters, and how many LoRA adapters this replica has loaded."""
        adapters = getattr(self.shim.engine, "adapters", None)
        return super().stats() | {"adapter_loads": adapters.loads if adapters else 0}

    def split(self, request: SDXLRequest) -> list[SDXLRequest]:
        return request.split(self.shim.batching.max_batch_size)

    async def run_part(self, part: SDXLRequest, progress: ProgressHook | None) -> Any:
        if adapter_set := serve.get_multiplexed_model_id():
            await self._hold_adapters(adapter_set)
        staged = _staged(progress, "base") if part.wants_refiner and progress else progress
        output = await super().run_part(part, staged)
        if not isinstance(output, RefineRequest):
            return output
        if self.refiner is None:  # the ingress refuses these; a direct handle call may not
            raise InvalidRequest("this service has no refiner deployed", param="refiner")
        return await self.refine(output, progress)

    async def refine(self, job: RefineRequest, progress: ProgressHook | None) -> SDXLOutput:
        """The refiner's output for the base's latents (its progress events marked "refiner")."""
        if progress is None:
            response = self.refiner.generate.remote(job)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
        stream = self.refiner.options(stream=True).generate_stream.remote(job)
        try:
            async for event in stream:
                if not isinstance(event, StepProgress):
                    return event
                progress(replace(event, stage="refiner"))
        except asyncio.CancelledError:
            stream.cancel()
            raise
        raise ModelError("the refiner ended without an answer", code="model_error")

    def encode(self, request: SDXLRequest, result: Any) -> SDXLOutput | RefineRequest:
        if result.latents is not None:  # for the refiner: it decodes and encodes the images
            return RefineRequest(
                request,
                result.latents,
                result.generator_states,
                result.seeds,
                result.timings,
                self.marker.model,
            )
        return encode_images(request, result, self.marker)


@serve.deployment(name="Refiner")
class RefinerDeployment(ModelDeployment):
    """The SDXL refiner, autoscaled on its own; called by the SDXL deployment with a request's latents.
    Its refinements share its step batch like the base's requests share theirs."""

    default_engine = "leap_ray.engines.sdxl_refiner:SDXLRefinerEngine"

    def split(self, job: RefineRequest) -> list[RefineRequest]:
        return job.split(self.shim.batching.max_batch_size)  # its batches may be smaller than the base's

    def encode(self, job: RefineRequest, result: Any) -> SDXLOutput:
        return encode_images(job.request, result, self.marker, base_model=job.model)


@serve.deployment(name="MusicGen")
class MusicGenDeployment(ModelDeployment):
    default_engine = "leap_ray.engines.musicgen:MusicGenEngine"

    def encode(self, request: Any, result: Any) -> Any:
        return encode_track(request, result, self.marker)
