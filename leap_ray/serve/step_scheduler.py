"""A model replica's step scheduler (`batching: step`): one thread drives a running batch (SDXL's
StepBatch, a denoising step; MusicGen's DecodeBatch, a token), and at every step boundary admits
waiting requests, oldest first, while they fit in `max_batch_size` (SDXL counts images, MusicGen
tracks). A request is answered as soon as its own steps are done, so a short request never waits for
a long one to finish; a cancelled one leaves at the next step."""

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

from leap_ray.api.progress import Progress
from leap_ray.engines.failures import internal_error
from leap_ray.errors import LeapRayError
from leap_ray.serve import metrics


class RunningBatch(Protocol):
    """What the scheduler drives: `StepBatch` (SDXL) and `DecodeBatch` (MusicGen)."""

    @property
    def load(self) -> int: ...  # what the admitted requests hold against max_batch_size; 0: idle

    def clear(self) -> None: ...  # forgets every request (after a fault of the batch itself)

    def cost(self, request: Any) -> int: ...

    def can_join(self, request: Any) -> bool: ...  # besides its cost (e.g. a model's cache size)

    def admit(
        self, request: Any, should_stop: Callable[[], bool], progress: Callable[[Progress], None] | None
    ) -> LeapRayError | None: ...

    def step(self) -> list[tuple[Any, Any]]: ...


def _settle(outcome: Future, value: Any) -> None:
    """Hands a request its outcome, unless its caller has gone (its future was cancelled)."""
    try:
        outcome.set_result(value)
    except InvalidStateError:
        pass


@dataclass
class _Waiting:
    request: Any
    should_stop: Callable[[], bool]
    progress: Callable[[Progress], None] | None
    outcome: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class StepScheduler:
    def __init__(self, batch: RunningBatch, max_load: int) -> None:
        self.batch = batch
        self.max_load = max_load
        self._waiting: deque[_Waiting] = deque()
        self._running: dict[int, _Waiting] = {}  # by id of the request
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="sdxl-steps", daemon=True)
        self._thread.start()

    async def generate(
        self,
        request: Any,
        should_stop: Callable[[], bool],
        progress: Callable[[Progress], None] | None,
    ) -> Any:
        """The request's engine outcome (its result or its error), once its steps are done."""
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
        return batch.load + batch.cost(request) <= self.max_load and batch.can_join(request)
