"""A model replica's core, free of Ray (so it is tested in-process): the engine, made from the config
(its class injectable, as in Ray Serve LLM), its spec, the batcher that drives its running batch, and
the replica's counters. It runs one request (or one part of a request) to its outcome, encoded for
the wire off the event loop."""

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from leap_ray.config import BatchingConfig, ModelSettings
from leap_ray.engines.contract import Engine, ProgressHook
from leap_ray.errors import ModelError
from leap_ray.model_sources import resolve_model
from leap_ray.serve.step_scheduler import StepScheduler

logger = logging.getLogger("ray.serve")


def import_class(path: str) -> type:
    """The class named by `module:Class`."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class ModelShim:
    """One replica's engine and batcher. `encode(request, result)` turns an engine result into the
    deployment's output."""

    def __init__(
        self, settings: ModelSettings, default_engine: str, encode: Callable[[Any, Any], Any]
    ) -> None:
        engine_class = import_class(settings.engine or default_engine)
        self.engine: Engine = engine_class(resolve_model(settings.model), **settings.engine_arguments())
        self.spec = self.engine.spec()
        self.encode = encode
        self.batching = BatchingConfig()  # until Serve passes the config's user_config
        self.scheduler: StepScheduler | None = None
        self.made = threading.Lock()  # reconfigure (Serve's thread) and a first request may race
        self.requests = self.cancelled = self.ongoing = 0

    def configure(self, batching: BatchingConfig) -> None:
        """Takes the batching settings (Serve's user_config), and starts the batcher if it has not."""
        with self.made:
            self.batching = batching
            if self.scheduler is not None:
                self.scheduler.configure(batching)
        self.start()

    def start(self) -> None:
        """Starts the batcher with the settings it has, unless it runs already. (Serve calls
        reconfigure only when the config has a user_config; else the first request starts it.)"""
        with self.made:
            if self.scheduler is None:
                batch = self.engine.running_batch(self.batching.max_batch_size)
                self.scheduler = StepScheduler(batch, self.batching)

    def check_health(self) -> None:
        """Raises when the batcher's thread has died: the replica can serve nothing more."""
        if self.scheduler is not None and not self.scheduler.alive:
            raise RuntimeError("the thread that drives the running batch has stopped")

    def stats(self) -> dict[str, int]:
        """Requests run, requests cancelled by their callers, requests in this replica now, steps made."""
        steps = self.scheduler.steps if self.scheduler else 0
        return {
            "requests": self.requests,
            "cancelled": self.cancelled,
            "ongoing": self.ongoing,
            "steps": steps,
        }

    async def run(self, request: Any, progress: ProgressHook | None) -> Any:
        """The request's output, or the error it alone met (returned, not raised); None when its caller
        went away. Cancelling the caller's task makes the request leave at its next step."""
        if self.scheduler is None:
            await asyncio.to_thread(self.start)
        cancelled = threading.Event()
        self.requests += 1
        self.ongoing += 1
        try:
            outcome = await self.scheduler.generate(request, cancelled.is_set, progress)
        except asyncio.CancelledError:
            cancelled.set()
            self.cancelled += 1
            raise
        finally:
            self.ongoing -= 1
        if isinstance(outcome, Exception) or outcome is None or cancelled.is_set():
            return outcome
        return await asyncio.to_thread(self.encoded, request, outcome)

    def encoded(self, request: Any, result: Any) -> Any:
        """The result encoded for the wire, or (should encoding fail) this request's error alone."""
        try:
            return self.encode(request, result)
        except Exception as error:
            logger.exception("encoding a result failed")
            return ModelError(f"the result could not be encoded: {error}", code="model_error")
