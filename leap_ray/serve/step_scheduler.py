"""The SDXL replica's step scheduler (`batching: step`): one thread drives a StepBatch, and at every
step boundary admits waiting requests, oldest first, while the batch holds fewer than
`max_batch_size` images. A request is answered as soon as its own steps are done, so a short request
never waits for a long one to finish; a cancelled one leaves at the next step."""

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.failures import internal_error

if TYPE_CHECKING:
    from leap_ray.engines.sdxl_steps import StepBatch


def _settle(outcome: Future, value: Any) -> None:
    """Hands a request its outcome, unless its caller has gone (its future was cancelled)."""
    try:
        outcome.set_result(value)
    except InvalidStateError:
        pass


@dataclass
class _Waiting:
    request: SDXLRequest
    should_stop: Callable[[], bool]
    progress: Callable[[StepProgress], None] | None
    outcome: Future = field(default_factory=Future)


class StepScheduler:
    def __init__(self, batch: "StepBatch", max_images: int) -> None:
        self.batch = batch
        self.max_images = max_images
        self._waiting: deque[_Waiting] = deque()
        self._running: dict[int, _Waiting] = {}  # by id of the request
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="sdxl-steps", daemon=True)
        self._thread.start()

    async def generate(
        self,
        request: SDXLRequest,
        should_stop: Callable[[], bool],
        progress: Callable[[StepProgress], None] | None,
    ) -> Any:
        """The request's engine outcome (an SDXLResult or its error), once its steps are done."""
        waiting = _Waiting(request, should_stop, progress)
        with self._wake:
            self._waiting.append(waiting)
            self._wake.notify()
        return await asyncio.wrap_future(waiting.outcome)

    def _loop(self) -> None:
        while True:
            self._admit()
            try:
                finished = self.batch.step()
            except Exception as error:  # not one request's fault (those come back as outcomes)
                finished = [(running.request, internal_error(error)) for running in self._running.values()]
                self.batch.running.clear()
            for request, outcome in finished:
                _settle(self._running.pop(id(request)).outcome, outcome)

    def _admit(self) -> None:
        """Admits waiting requests that fit; blocks while there is nothing to run."""
        with self._wake:
            while not self._waiting and not self.batch.running:
                self._wake.wait()
            while self._waiting and self._fits(self._waiting[0].request):
                waiting = self._waiting.popleft()
                if waiting.should_stop():  # cancelled while it waited: it never runs
                    _settle(waiting.outcome, None)
                    continue
                error = self.batch.admit(waiting.request, waiting.should_stop, waiting.progress)
                if error is not None:
                    _settle(waiting.outcome, error)
                else:
                    self._running[id(waiting.request)] = waiting

    def _fits(self, request: SDXLRequest) -> bool:
        # An empty batch takes any request (the deployment splits those bigger than a batch).
        return not self.batch.running or self.batch.images + request.image_count <= self.max_images
