"""A model replica's batcher: one thread drives the engine's running batch (leap_ray.engines.contract:
SDXL's denoising steps, MusicGen's tokens, the refiner's steps) and admits waiting requests, oldest
first, while they fit in `max_batch_size` (SDXL counts images, MusicGen tracks).

Under `batching: step` (the default) it admits at every step boundary: a request is answered as soon
as its own steps are done, so a short request never waits for a long one to finish. Under `batching:
request` it admits only into an empty batch, after waiting up to `batch_wait_timeout_s` for one to
fill, and runs those requests to their end: whole-request batches, the baseline the benchmarks
measure step batching against. A cancelled request leaves at its next step in either mode."""

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from leap_ray.config import BatchingConfig
from leap_ray.engines.contract import ProgressHook, RunningBatch, StopCheck
from leap_ray.engines.failures import internal_error
from leap_ray.serve import metrics


def _settle(outcome: Future, value: Any) -> None:
    """Hands a request its outcome, unless its caller has gone (its future was cancelled)."""
    try:
        outcome.set_result(value)
    except InvalidStateError:
        pass


@dataclass
class _Waiting:
    request: Any
    should_stop: StopCheck
    progress: ProgressHook | None
    outcome: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class StepScheduler:
    def __init__(self, batch: RunningBatch, batching: BatchingConfig) -> None:
        self.batch = batch
        self.steps = 0
        self._waiting: deque[_Waiting] = deque()
        self._running: dict[int, _Waiting] = {}  # by id of the request
        self._wake = threading.Condition()
        self.configure(batching)
        self._thread = threading.Thread(target=self._loop, name="model-steps", daemon=True)
        self._thread.start()

    def configure(self, batching: BatchingConfig) -> None:
        """Takes new batching settings (Serve's user_config), from the next admission on."""
        with self._wake:
            self.batching = batching
            self.batch.max_load = batching.max_batch_size
            self._wake.notify()

    async def generate(self, request: Any, should_stop: StopCheck, progress: ProgressHook | None) -> Any:
        """The request's engine outcome (its result or its error), once its steps are done; None when it
        was cancelled before it ran."""
        waiting = _Waiting(request, should_stop, progress)
        with self._wake:
            self._waiting.append(waiting)
            self._wake.notify()
        return await asyncio.wrap_future(waiting.outcome)

    def _loop(self) -> None:
        while True:
            self._admit()
            try:
                load, started = self.batch.load, time.perf_counter()
                finished = self.batch.step()
                self.steps += 1
                metrics.step_seconds().observe(time.perf_counter() - started)
                metrics.batch_load().observe(load)
            except Exception as error:  # not one request's fault (those come back as outcomes)
                finished = [(running.request, internal_error(error)) for running in self._running.values()]
                self.batch.clear()
            for request, outcome in finished:
                _settle(self._running.pop(id(request)).outcome, outcome)

    def _admit(self) -> None:
        """Admits waiting requests that fit; blocks while there is nothing to run. Admission (prompt
        encoding, a MusicGen prefill) runs outside the lock, which the event loop takes to queue."""
        with self._wake:
            while not self._waiting and not self.batch.load:
                self._wake.wait()
            if self.batching.batching == "request":
                if self.batch.load:  # a whole-request batch takes no one until it is done
                    return
                self._wait_to_fill()
        while waiting := self._next_fitting():
            if waiting.should_stop():  # cancelled while it waited: it never runs
                _settle(waiting.outcome, None)
                continue
            metrics.queue_wait_seconds().observe(time.monotonic() - waiting.arrived)
            error = self.batch.admit(waiting.request, waiting.should_stop, waiting.progress)
            if error is not None:
                _settle(waiting.outcome, error)
            else:
                self._running[id(waiting.request)] = waiting

    def _wait_to_fill(self) -> None:
        """Waits (holding the lock's condition) until the waiting requests would fill a batch or the
        oldest has waited `batch_wait_timeout_s`."""
        deadline = self._waiting[0].arrived + self.batching.batch_wait_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if sum(self.batch.cost(waiting.request) for waiting in self._waiting) >= self.batch.max_load:
                return
            self._wake.wait(left)

    def _next_fitting(self) -> _Waiting | None:
        """The oldest waiting request, if it fits now (only this thread touches the batch)."""
        with self._wake:
            if self._waiting and self._fits(self._waiting[0].request):
                return self._waiting.popleft()
        return None

    def _fits(self, request: Any) -> bool:
        # An empty batch takes any request (the deployment splits those bigger than a batch).
        batch = self.batch
        if not batch.load:
            return True
        return batch.load + batch.cost(request) <= batch.max_load and batch.can_join(request)
