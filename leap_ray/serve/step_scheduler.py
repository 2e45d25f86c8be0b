"""A model replica's batcher: one thread drives the engine's running batch (leap_ray.engines.contract:
SDXL's denoising steps, MusicGen's tokens, the refiner's steps) and admits waiting requests, oldest
first, while they fit in `max_batch_size` (SDXL counts images, MusicGen tracks).

Under `batching: step` (the default) it admits at every step boundary: a request is answered as soon
as its own steps are done, so a short request never waits for a long one to finish. Under `batching:
request` it admits only into an empty batch, after waiting up to `batch_wait_timeout_s` for one to
fill, and runs those requests to their end: whole-request batches, the baseline the benchmarks
measure step batching against. A cancelled request leaves at its next step in either mode."""

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from leap_ray.config import BatchingConfig
from leap_ray.engines.contract import ProgressHook, RunningBatch, StopCheck, fits
from leap_ray.engines.failures import request_error
from leap_ray.errors import LeapRayError
from leap_ray.serve import metrics

logger = logging.getLogger("ray.serve")


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
        self.last_admitted = 0  # requests admitted together last time (whole-request batches)
        self._waiting: deque[_Waiting] = deque()
        # By id of the request; a list, should one object be submitted twice (matched in turn).
        self._running: defaultdict[int, deque[_Waiting]] = defaultdict(deque)
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

    @property
    def alive(self) -> bool:
        """Whether the thread that drives the batch runs (the replica's health check asks)."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            try:
                self._admit()
                if self.batch.load:
                    self._step()
            except Exception as error:  # the batch's own fault: a request's comes back as its outcome
                logger.error("the running batch failed; its requests fail with it", exc_info=error)
                self._fail_running()

    def _step(self) -> None:
        load, started = self.batch.load, time.perf_counter()
        finished = self.batch.step()
        self.steps += 1
        metrics.step_seconds().observe(time.perf_counter() - started)
        metrics.batch_load().observe(load)
        for request, outcome in finished:
            running = self._running[id(request)]
            _settle(running.popleft().outcome, outcome)
            if not running:
                del self._running[id(request)]

    def _fail_running(self) -> None:
        """Every running request fails, each with its own error; the batch starts afresh."""
        for running in self._running.values():
            for each in running:
                _settle(each.outcome, LeapRayError("internal error", code="internal_error"))
        self._running.clear()
        self.batch.clear()

    def _admit(self) -> None:
        """Admits waiting requests that fit; blocks while there is nothing to run. Admission (prompt
        encoding, a MusicGen prefill) runs outside the lock, which the event loop takes to queue."""
        with self._wake:
            while not self._waiting and not self.batch.load:
                self._wake.wait()
            whole_requests = self.batching.batching == "request"
            if whole_requests:
                if self.batch.load:  # a whole-request batch takes no one until it is done
                    return
                self._wait_to_fill()
        admitted = 0
        while waiting := self._next_fitting():
            try:
                admitted += self._admit_one(waiting)
            except Exception as error:  # a hook or an engine that broke the contract: this request's
                _settle(waiting.outcome, request_error(error))
        if whole_requests:
            self.last_admitted = admitted

    def _admit_one(self, waiting: _Waiting) -> bool:
        """Hands the request to the batch (its error, if it cannot join, is its outcome); False when it
        was cancelled while it waited, or refused."""
        if waiting.should_stop():  # it never runs
            _settle(waiting.outcome, None)
            return False
        metrics.queue_wait_seconds().observe(time.monotonic() - waiting.arrived)
        error = self.batch.admit(waiting.request, waiting.should_stop, waiting.progress)
        if error is not None:
            _settle(waiting.outcome, error)
            return False
        self._running[id(waiting.request)].append(waiting)
        return True

    def _wait_to_fill(self) -> None:
        """Waits (holding the lock's condition) until the waiting requests would fill a batch or the
        oldest has waited `batch_wait_timeout_s`. Waiting pays only when others are coming: a lone
        request on a replica whose last batch had no company goes at once."""
        if len(self._waiting) == 1 and self.last_admitted <= 1:
            return
        deadline = self._waiting[0].arrived + self.batching.batch_wait_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if sum(self.batch.cost(waiting.request) for waiting in self._waiting) >= self.batch.max_load:
                return
            self._wake.wait(left)

    def _next_fitting(self) -> _Waiting | None:
        """The oldest waiting request, if it fits now (only this thread touches the batch). One whose
        fit cannot be told fails with that error."""
        with self._wake:
            while self._waiting:
                try:
                    return self._waiting.popleft() if fits(self.batch, self._waiting[0].request) else None
                except Exception as error:
                    _settle(self._waiting.popleft().outcome, request_error(error))
        return None
