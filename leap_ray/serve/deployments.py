"""The model deployments: thin shims over the engines. Each owns one engine (class injectable by
config, as in Ray Serve LLM), batches concurrent requests with `@serve.batch`, and encodes results off
the event loop. Replicas, autoscaling, GPUs, queue limits and batching (`user_config`) come from the
Serve config."""

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from leap_ray.api.audio import encode_audio
from leap_ray.api.images import encode_image
from leap_ray.api.musicgen import MusicGenModelSpec, MusicGenOutput, MusicGenRequest
from leap_ray.api.sdxl import SDXLModelSpec, SDXLOutput, SDXLRequest
from leap_ray.config import BatchingConfig, ModelSettings


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class _Pending:
    """A request waiting in or running through a batch; `cancelled` is set when its caller goes away."""

    request: Any
    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[dict], None] | None = None  # called from the engine's thread


def batch_cost(pending: Sequence[_Pending]) -> int:
    """What a batch costs against max_batch_size: an SDXL request counts its images."""
    return sum(getattr(item.request, "image_count", 1) for item in pending)


class _ModelDeployment:
    default_engine: str

    def __init__(self, settings: ModelSettings) -> None:
        from leap_ray.testing import resolve_model  # imports diffusers: only model replicas need it

        engine_class = _import(settings.engine or self.default_engine)
        self.engine = engine_class(resolve_model(settings.model), **settings.engine_kwargs)
        self.model_spec = self.engine.spec()
        self.requests_served = 0
        self.batches_served = 0
        self.requests_cancelled = 0
        self.requests_ongoing = 0
        self.batch_wait_s = BatchingConfig().batch_wait_timeout_s
        self.last_batch_requests = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batching = BatchingConfig.model_validate(user_config or {})
        self._generate_batch.set_max_batch_size(batching.max_batch_size)
        self.batch_wait_s = batching.batch_wait_timeout_s

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
        return await self._generate_pending(_Pending(request))

    async def generate_stream(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        """Progress events ({"event": "progress", ...}) while the request runs, then
        {"event": "result", "output": ...}. Closing the stream cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict] = asyncio.Queue()
        pending = _Pending(
            request, progress=lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        )
        task = loop.create_task(self._generate_pending(pending))
        try:
            while not task.done() or not events.empty():
                next_event = loop.create_task(events.get())
                await asyncio.wait({next_event, task}, return_when=asyncio.FIRST_COMPLETED)
                if next_event.done():
                    yield {"event": "progress", **next_event.result()}
                else:
                    next_event.cancel()
            yield {"event": "result", "output": task.result()}
        finally:
            if not task.done():
                task.cancel()

    async def _generate_pending(self, pending: _Pending) -> Any:
        self.requests_ongoing += 1
        # Waiting for a batch to fill pays only when others are coming: wait when some are here or the
        # last batch had company; a lone request on an idle replica goes at once. (Serve reads the
        # wait when a batch's first request arrives, which is just below.)
        alone = self.requests_ongoing == 1 and self.last_batch_requests <= 1
        self._generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.batch_wait_s)
        try:
            output = await self._generate_batch(pending)
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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02, batch_size_fn=batch_cost)
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
            else self.encode(item.request, result)
            for item, result in zip(pending, results, strict=True)
        ]

    def encode(self, request: Any, result: Any) -> Any:
        raise NotImplementedError


@serve.deployment(
    name="SDXL",
    max_ongoing_requests=16,
    user_config=BatchingConfig().model_dump(),
    ray_actor_options={"num_cpus": 1},
)
class SDXLDeployment(_ModelDeployment):
    default_engine = "leap_ray.engines.sdxl:SDXLEngine"

    def encode(self, request: SDXLRequest, result: Any) -> SDXLOutput:
        return SDXLOutput(
            images=[encode_image(pixels, request.output_format) for pixels in result.images],
            format=request.output_format,
            seeds=result.seeds,
            timings=result.timings,
            batch_size=result.batch_size,
        )


@serve.deployment(
    name="MusicGen",
    max_ongoing_requests=16,
    user_config=BatchingConfig().model_dump(),
    ray_actor_options={"num_cpus": 1},
)
class MusicGenDeployment(_ModelDeployment):
    default_engine = "leap_ray.engines.musicgen:MusicGenEngine"

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
