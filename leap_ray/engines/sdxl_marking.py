"""SDXL's invisible watermark off the step thread: a finished request whose images are to be marked
(`sdxl_decode.Decoded.pending`) is finished on a marking worker, and its outcome taken by the thread
that drives the step batch at a later step, so that no batch neighbour's step waits for the
watermark's CPU work (0.29 s per 1024² image on one core here: 2.3 s for 8 images, which held every
neighbour's next step, before). Until its outcome is taken, the request still counts in the batch's
load (its images are held), as it did while it was marked on the step thread.

A run of the own lane (`sdxl_own_lane`) goes to the same workers: its images leave the own lane's
count as they enter the marking's, so the batch counts each image exactly once until its outcome is
taken. `close` stops the workers (the batch's owner tears it down); a request submitted after that,
or while the interpreter exits, gets an error outcome rather than being lost."""

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch

from leap_ray.engines.contract import Outcome
from leap_ray.engines.failures import request_error
from leap_ray.errors import ModelUnavailable

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.02  # how long the driving thread, with nothing else to do, waits for a marked outcome
# Threads that mark (cv2's and numpy's work releases the GIL): a core spared for the step thread.
WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))


class Marker(Protocol):
    """Where a lane sends a finished request whose images are to be marked (`Marking`, or the own lane,
    which hands them on to it)."""

    def submit(self, submitted: Any, images: int, finish: Callable[[], Any]) -> None:
        """Finishes the request (`finish` makes its result) off the lane's thread; its `images` are
        held until its outcome is taken."""


class HeldOutcomes:
    """Outcomes finished off the thread that drives the step batch, each with the images it held
    until that thread takes it: what the marking workers and the own lane share."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.outcomes: list[tuple[Outcome, int]] = []  # each outcome with the images it held
        self.held = 0  # images whose outcomes were not taken yet
        self.generation = 0  # `clear` starts a new one: outcomes of the old are dropped

    def take(self, wait: bool) -> list[Outcome]:
        """The outcomes finished since the last call; with `wait`, waits up to IDLE_WAIT_S for one."""
        with self.changed:
            if wait and not self.outcomes and self.held:
                self.changed.wait(IDLE_WAIT_S)
            finished, self.outcomes = self.outcomes, []
            self.held -= sum(images for _, images in finished)
            return [outcome for outcome, _ in finished]

    def forget(self) -> None:
        """Drops every outcome and count (the driver failed them all); holds `_changed`."""
        self.generation += 1
        self.outcomes.clear()
        self.held = 0


class Marking(HeldOutcomes):
    """Finishes outcomes on worker threads (`submit`); the driving thread takes them (`take`)."""

    def __init__(self, workers: int = WORKERS) -> None:
        super().__init__()
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None  # started on first use
        self._closed = False

    @property
    def load(self) -> int:
        """Images being marked, or marked and not yet taken."""
        return self.held

    def submit(self, submitted: Any, images: int, finish: Callable[[], Any]) -> None:
        """Runs `finish` (the request's result, its images marked) on a worker; its outcome (or the
        error it raised, the request's own) is then the request's."""
        with self.changed:
            self.held += images
            generation = self.generation
            if self._executor is None and not self._closed:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sdxl-watermark")
            executor = self._executor
        try:
            if executor is None:
                raise RuntimeError("the marking workers were closed")
            executor.submit(self._run, submitted, images, finish, generation)
        except RuntimeError as error:  # closed, or the interpreter is exiting: no worker will run it
            logger.warning("a request could not be watermarked: %s", error)
            failure = ModelUnavailable(
                "the replica is shutting down; a retry may succeed", code="shutting_down"
            )
            self._settle(submitted, failure, images, generation)

    def clear(self) -> None:
        """Forgets every request (the driver failed them all); a marking in flight is dropped when done."""
        with self.changed:
            self.forget()

    def close(self) -> None:
        """Stops the workers once the markings in flight are done (their outcomes can still be
        taken); a request submitted later gets an error outcome."""
        with self.changed:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def _run(self, submitted: Any, images: int, finish: Callable[[], Any], generation: int) -> None:
        try:
            with torch.inference_mode():
                outcome = finish()
        except Exception as error:
            outcome = request_error(error)
        self._settle(submitted, outcome, images, generation)

    def _settle(self, submitted: Any, outcome: Any, images: int, generation: int) -> None:
        """The request's outcome, to be taken: its images stay held until then."""
        with self.changed:
            if generation == self.generation:
                self.outcomes.append(((submitted, outcome), images))
                self.changed.notify_all()
