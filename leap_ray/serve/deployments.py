"""The model deployments: thin shims over the engines. Each owns one engine (class injectable by
config, as in Ray Serve LLM) and batches concurrent requests: under `batching: step` (the default)
through a step scheduler driving the engine's running batch (SDXL denoising steps, MusicGen tokens),
under `batching: request` with `@serve.batch`; results are encoded off the event loop. Replicas,
autoscaling, GPUs, queue limits and batching (`user_config`) come from the Serve config alone
(serve_config.yaml, leap_ray/configs/local.yaml), not from these decorators.

A request bigger than a batch (an SDXL request for more images than max_batch_size) is split into
parts that each fit, run as separate batch items, and put back together in order."""

import asyncio
import importlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from leap_ray.api.audio import encode_audio
from leap_ray.api.common import with_seed
from leap_ray.api.images import encode_image
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenOutput, MusicGenRequest
from leap_ray.api.progress import Progress, StepProgress
from leap_ray.api.sdxl import RefineRequest, SDXLModelSpec, SDXLOutput, SDXLRequest
from leap_ray.config import BatchingConfig, ModelSettings, SDXLSettings
from leap_ray.errors import InvalidRequest, ModelError
from leap_ray.model_sources import resolve_model
from leap_ray.serve.step_scheduler import RunningBatch, StepScheduler

logger = logging.getLogger("ray.serve")
DEFAULT_BATCHING = BatchingConfig()  # until Serve passes the config's user_config to reconfigure


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class _Pending:
    """A request waiting in or running through a batch; `cancelled` is set when its caller goes away."""

    request: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[Progress], None] | None = None  # called from the engine's thread


def batch_cost(pending: Sequence[_Pending]) -> int:
    """What a batch costs against max_batch_size: an SDXL request counts its images."""
    return sum(getattr(item.request, "image_count", 1) for item in pending)


class _ModelDeployment:
    default_engine: str

    def __init__(self, settings: ModelSettings) -> None:
        engine_class = _import(settings.engine or self.default_engine)
        self.engine = engine_class(resolve_model(settings.model), **settings.engine_arguments())
        self.model_spec = self.engine.spec()
        self.requests_served = 0
        self.batches_served = 0
        self.requests_cancelled = 0
        self.requests_ongoing = 0
        self.batching = DEFAULT_BATCHING
        self.last_batch_requests = 0
        self._steps_made = asyncio.Lock()

    _steps: StepScheduler | None = None
    _mode_set = False

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batching = BatchingConfig.model_validate(user_config or {})
        # Both modes share the model's state (MusicGen's KV cache): a running batch must never meet a
        # whole-request one, so a replica keeps the mode it started with.
        if self._mode_set and batching.batching != self.batching.batching:
            raise ValueError("user_config.batching is fixed when a replica starts; redeploy to change it")
        self._mode_set, self.batching = True, batching
        self._generate_batch.set_max_batch_size(self.batching.max_batch_size)
        if self.batching.batching == "step":
            if self._steps is None:
                self._steps = StepScheduler(self.running_batch(), self.batching.max_batch_size)
            self._steps.max_load = self.batching.max_batch_size

    def running_batch(self) -> RunningBatch:
        """The engine's running batch for `batching: step` (made once, before the replica is healthy):
        the engine's own if it brings one (the simulated engines do), else the model's."""
        own = getattr(self.engine, "running_batch", None)
        return own() if own is not None else self.model_running_batch()

    def model_running_batch(self) -> RunningBatch:
        raise NotImplementedError

    def spec(self) -> SDXLModelSpec | MusicGenModelSpec:
        return self.model_spec

    def stats(self) -> dict[str, int]:
        """Requests run through the engine, batches, requests cancelled by their callers, and
        requests in this replica now."""
        return {
            "requests": self.requests_served,
            "batches": self.batches_served,
            "cancelled": self.requests_cancelled,
            "ongoing": self.requests_ongoing,
        }

    async def generate(self, request: Any) -> Any:
        return await self._generate_whole(request, progress=None)

    async def generate_stream(self, request: Any) -> AsyncIterator[Any]:
        """Progress events (StepProgress or AudioProgress) while the request runs, then its output.
        Closing the stream cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Progress] = asyncio.Queue()
        progress = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731
        task = loop.create_task(self._generate_whole(request, progress))
        try:
            while not task.done() or not events.empty():
                next_event = loop.create_task(events.get())
                await asyncio.wait({next_event, task}, return_when=asyncio.FIRST_COMPLETED)
                if next_event.done():
                    yield next_event.result()
                else:
                    next_event.cancel()
            yield task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _generate_whole(self, request: Any, progress: Callable[[Progress], None] | None) -> Any:
        """Runs the request as one batch item, or, when it is bigger than a batch, as parts that each
        fit (run concurrently, joined in order)."""
        parts = self.split(request)
        if len(parts) == 1:
            return await self._generate_pending(_Pending(request, progress=progress))
        report = _PartsProgress(len(parts), progress) if progress else None
        try:
            async with asyncio.TaskGroup() as group:  # one part failing cancels the others
                runs = [
                    group.create_task(
                        self._generate_pending(_Pending(part, progress=report.part(i) if report else None))
                    )
                    for i, part in enumerate(parts)
                ]
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return self.join([run.result() for run in runs])

    def split(self, request: Any) -> list[Any]:
        """The request as parts that each fit in a batch (most requests are one part)."""
        return [request]

    def join(self, outputs: list[Any]) -> Any:
        raise NotImplementedError

    async def _generate_pending(self, pending: _Pending) -> Any:
        self.requests_ongoing += 1
        # Waiting for a batch to fill pays only when others are coming: wait when some are here or the
        # last batch had company; a lone request on an idle replica goes at once. (Serve reads the
        # wait when a batch's first request arrives, which is just below.)
        alone = self.requests_ongoing == 1 and self.last_batch_requests <= 1
        self._generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.batching.batch_wait_timeout_s)
        try:
            output = await self._dispatch(pending)
        except asyncio.CancelledError:
            # The caller went away (Serve cancels this task): a queued request is dropped from its
            # batch by @serve.batch; a running one leaves its batch at the engine's next step.
            pending.cancelled.set()
            self.requests_cancelled += 1
            raise
        finally:
            self.requests_ongoing -= 1
        if isinstance(output, Exception):
            raise output
        return output

    async def _dispatch(self, pending: _Pending) -> Any:
        """The request's output (or error): from the step scheduler, or from whole-request batches."""
        if self.batching.batching != "step":
            return await self._generate_batch(pending)
        if self._steps is None:  # no user_config: Serve never called reconfigure, which makes it
            async with self._steps_made:
                if self._steps is None:
                    await asyncio.to_thread(self.reconfigure, {})
        self.requests_served += 1
        outcome = await self._steps.generate(pending.request, pending.cancelled.is_set, pending.progress)
        if isinstance(outcome, Exception) or outcome is None or pending.cancelled.is_set():
            return outcome
        return await asyncio.to_thread(self._encoded, pending, outcome)

    @serve.batch(
        max_batch_size=DEFAULT_BATCHING.max_batch_size,
        batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s,
        batch_size_fn=batch_cost,
    )
    async def _generate_batch(self, pending: list[_Pending]) -> list[Any]:
        # The engine and the encoders are blocking: run them off the replica's event loop.
        return await asyncio.to_thread(self._run, pending)

    def _run(self, pending: list[_Pending]) -> list[Any]:
        self.requests_served += len(pending)
        self.batches_served += 1
        self.last_batch_requests = len(pending)
        results = self.engine.generate(
            [item.request for item in pending],
            should_stop=[item.cancelled.is_set for item in pending],
            progress=[item.progress for item in pending],
        )
        return [
            result
            if isinstance(result, Exception) or item.cancelled.is_set()
            else self._encoded(item, result)
            for item, result in zip(pending, results, strict=True)
        ]

    def _encoded(self, item: _Pending, result: Any) -> Any:
        """The result encoded for the wire, or (should encoding fail) this request's error alone."""
        try:
            return self.encode(item.request, result)
        except Exception as error:
            logger.exception("encoding a result failed")
            return ModelError(f"the result could not be encoded: {error}", code="model_error")

    def encode(self, request: Any, result: Any) -> Any:
        raise NotImplementedError


class _PartsProgress:
    """One progress stream for a request run as parts: the parts' mean step in the earliest stage any
    part is in (a part past it counts all of that stage's steps), reported as it grows."""

    def __init__(self, parts: int, progress: Callable[[StepProgress], None]) -> None:
        self.at = [(0, 0)] * parts  # each part's (stage, step): stage 0 the base (or the only), 1 the refiner
        self.totals: dict[int, int] = {}  # each stage's steps
        self.progress = progress
        self.reported = (0, 0)

    def part(self, index: int) -> Callable[[StepProgress], None]:
        def report(event: StepProgress) -> None:
            own = int(event.stage == "refiner")
            self.at[index], self.totals[own] = (own, event.step), event.total
            stage = min(rank for rank, _ in self.at)
            total = self.totals[stage]
            step = sum(step if rank == stage else total for rank, step in self.at) // len(self.at)
            preview = event.preview if index == 0 and own == stage else None
            if (stage, step) > self.reported or preview:
                self.reported = max(self.reported, (stage, step))
                name = event.stage if own == stage else "base"
                self.progress(replace(event, step=step, total=total, stage=name, preview=preview))

        return report


def _adapter_set_holder() -> Callable[[str], Any]:
    async def adapter_set(adapter_set: str) -> str:
        """What Serve's multiplexing tracks per replica: the adapter sets it has served. The engine
        loads the adapters themselves, on its own thread, when the request is admitted."""
        return adapter_set

    return adapter_set


def _staged(progress: Callable[[Progress], None], stage: str) -> Callable[[Progress], None]:
    """A progress hook that marks each event with its stage (base or refiner)."""
    return lambda event: progress(replace(event, stage=stage))


@serve.deployment(name="SDXL")
class SDXLDeployment(_ModelDeployment):
    """The SDXL base. A request for the refiner runs here to its `denoising_end`; its latents and
    generator states then go to the Refiner deployment through its handle (Ray's object store), and
    its answer is the refiner's. Requests naming LoRA adapters come with Serve's multiplexed model id
    (their adapter set), so Serve routes them to replicas that already hold those adapters."""

    default_engine = "leap_ray.engines.sdxl:SDXLEngine"

    def __init__(self, settings: SDXLSettings, refiner: DeploymentHandle | None = None) -> None:
        super().__init__(settings)
        self.refiner = refiner
        self.model_spec = replace(self.model_spec, refiner=refiner is not None)
        # Wired here, not by decorator, since the bound comes from the config; Serve keeps its state on
        # the function, so each replica gets its own.
        self._hold_adapters = serve.multiplexed(max_num_models_per_replica=settings.max_loaded_loras)(
            _adapter_set_holder()
        )

    def stats(self) -> dict[str, int]:
        """The model deployment's counters, and how many LoRA adapters this replica has loaded."""
        adapters = getattr(self.engine, "adapters", None)
        return super().stats() | {"adapter_loads": adapters.loads if adapters else 0}

    async def _dispatch(self, pending: _Pending) -> Any:
        if adapter_set := serve.get_multiplexed_model_id():
            await self._hold_adapters(adapter_set)
        progress = pending.progress
        if pending.request.wants_refiner and progress is not None:
            pending.progress = _staged(progress, "base")
        output = await super()._dispatch(pending)
        if not isinstance(output, RefineRequest):
            return output
        if self.refiner is None:  # the ingress refuses these; a direct handle call may not
            return InvalidRequest("this service has no refiner deployed", param="refiner")
        return await self._refine(output, progress)

    async def _refine(self, job: RefineRequest, progress: Callable[[Progress], None] | None) -> Any:
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

    def model_running_batch(self) -> RunningBatch:
        from leap_ray.engines.sdxl_steps import StepBatch  # diffusers: model replicas only

        batch = StepBatch(self.engine)
        batch.warm_up()  # before the replica reports healthy: no request pays for compiling
        return batch

    def split(self, request: SDXLRequest) -> list[SDXLRequest]:
        # The seed is fixed first, so that image j of every part gets seed + j (a direct call may have none).
        return with_seed(request).split(self.batching.max_batch_size)

    def join(self, outputs: list[SDXLOutput]) -> SDXLOutput:
        return SDXLOutput.join(outputs)

    def encode(self, request: SDXLRequest, result: Any) -> SDXLOutput | RefineRequest:
        if result.latents is not None:  # for the refiner: it decodes and encodes the images
            return RefineRequest(
                request, result.latents, result.generator_states, result.seeds, result.timings
            )
        return encode_images(request, result)


def encode_images(request: SDXLRequest, result: Any) -> SDXLOutput:
    """An SDXL engine's result (base or refiner) as the deployment's output."""
    return SDXLOutput(
        images=[encode_image(pixels, request.output_format) for pixels in result.images],
        format=request.output_format,
        seeds=result.seeds,
        timings=result.timings,
        batch_size=result.batch_size,
    )


@serve.deployment(name="Refiner")
class RefinerDeployment(_ModelDeployment):
    """The SDXL refiner, autoscaled on its own; called by the SDXL deployment with a request's latents.
    It batches whole requests (`batching: request`): a refining call is short, and requests that
    agree on their call's settings share it."""

    default_engine = "leap_ray.engines.sdxl_refiner:SDXLRefinerEngine"

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.batching = BatchingConfig(batching="request")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        user_config = {"batching": "request", **(user_config or {})}
        if user_config["batching"] != "request":
            raise ValueError("the Refiner deployment batches whole requests: user_config.batching: request")
        super().reconfigure(user_config)

    def split(self, job: RefineRequest) -> list[RefineRequest]:
        return job.split(self.batching.max_batch_size)  # its batches may be smaller than the base's

    def join(self, outputs: list[SDXLOutput]) -> SDXLOutput:
        return SDXLOutput.join(outputs)

    def encode(self, request: RefineRequest, result: Any) -> SDXLOutput:
        return encode_images(request.request, result)


@serve.deployment(name="MusicGen")
class MusicGenDeployment(_ModelDeployment):
    default_engine = "leap_ray.engines.musicgen:MusicGenEngine"

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        super().reconfigure(user_config)
        if self._steps is not None:  # the decoder's cache is sized for max_batch_size tracks
            self._steps.batch.max_tracks = self.batching.max_batch_size

    def model_running_batch(self) -> RunningBatch:
        from leap_ray.engines.musicgen_steps import DecodeBatch  # transformers: model replicas only

        return DecodeBatch(self.engine, max_tracks=self.batching.max_batch_size)

    def encode(self, request: MusicGenRequest, result: Any) -> MusicGenOutput:
        waveform: np.ndarray = result.waveform
        return MusicGenOutput(
            audio=encode_audio(waveform, result.sample_rate, request.format),
            format=request.format,
            sample_rate=result.sample_rate,
            duration=len(waveform) / result.sample_rate,
            seed=result.seed,
            timings=result.timings,
            batch_size=result.batch_size,
        )
