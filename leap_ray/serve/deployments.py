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

from leap_ray.api.audio import encode_audio
from leap_ray.api.common import with_seed
from leap_ray.api.images import encode_image
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenOutput, MusicGenRequest
from leap_ray.api.progress import Progress, StepProgress
from leap_ray.api.sdxl import SDXLModelSpec, SDXLOutput, SDXLRequest
from leap_ray.config import BatchingConfig, ModelSettings
from leap_ray.errors import ModelError
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
        self.engine = engine_class(resolve_model(settings.model), **settings.engine_kwargs)
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
    """One progress stream for a request run as parts: the parts' mean step, reported as it grows."""

    def __init__(self, parts: int, progress: Callable[[StepProgress], None]) -> None:
        self.steps = [0] * parts
        self.progress = progress
        self.reported = 0

    def part(self, index: int) -> Callable[[StepProgress], None]:
        def report(event: StepProgress) -> None:
            self.steps[index] = event.step
            step = sum(self.steps) // len(self.steps)
            if step > self.reported or (index == 0 and event.preview):
                self.reported = step
                self.progress(replace(event, step=step, preview=event.preview if index == 0 else None))

        return report


@serve.deployment(name="SDXL")
class SDXLDeployment(_ModelDeployment):
    default_engine = "leap_ray.engines.sdxl:SDXLEngine"

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

    def encode(self, request: SDXLRequest, result: Any) -> SDXLOutput:
        return SDXLOutput(
            images=[encode_image(pixels, request.output_format) for pixels in result.images],
            format=request.output_format,
            seeds=result.seeds,
            timings=result.timings,
            batch_size=result.batch_size,
        )


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
