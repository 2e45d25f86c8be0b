"""SDXL's invisible watermark off the step thread: a finished request whose images are to be marked
(`sdxl_decode.Decoded.pending`) is finished on a marking worker, and its outcome taken by the thread
that drives the step batch at a later step, so that no batch neighbour's step waits for the
watermark's CPU work (0.29 s per 1024² image on one core here: 2.3 s for 8 images, which held every
neighbour's next step, before). Until its outcome is taken, the request still counts in the batch's
load (its images are held), as it did while it was marked on the step thread."""

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from leap_ray.engines.contract import Outcome
from leap_ray.engines.failures import request_error

IDLE_WAIT_S = 0.02  # how long the driving thread, with nothing else to do, waits for a marked outcome
# Threads that mark (cv2's and numpy's work releases the GIL): a core spared for the step thread.
WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))


class Marking:
    """Finishes outcomes on worker threads (`submit`); the driving thread takes them (`take`)."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None  # started on first use
        self._changed = threading.Condition()
        self._finished: list[tuple[Outcome, int]] = []  # each outcome with the images it held
        self._held = 0
        self._generation = 0  # `clear` starts a new one: outcomes of the old are dropped

    @property
    def load(self) -> int:
        """Images being marked, or marked and not yet taken."""
        return self._held

    def submit(self, submitted: Any, images: int, finish: Callable[[], Any]) -> None:
        """Runs `finish` (the request's result, its images marked) on a worker; its outcome (or the
        error it raised, the request's own) is then the request's."""
        with self._changed:
            self._held += images
            generation = self._generation
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="sdxl-watermark")
        self._executor.submit(self._run, submitted, images, finish, generation)

    def take(self, wait: bool) -> list[Outcome]:
        """The outcomes finished since the last call; with `wait`, waits up to IDLE_WAIT_S for one."""
        with self._changed:
            if wait and not self._finished and self._held:
                self._changed.wait(IDLE_WAIT_S)
            finished, self._finished = self._finished, []
            self._held -= sum(images for _, images in finished)
            return [outcome for outcome, _ in finished]

    def clear(self) -> None:
        """Forgets every request (the driver failed them all); a marking in flight is dropped when done."""
        with self._changed:
            self._generation += 1
            self._finished.clear()
            self._held = 0

    def _run(self, submitted: Any, images: int, finish: Callable[[], Any], generation: int) -> None:
        try:
            with torch.inference_mode():
                outcome = finish()
        except Exception as error:
            outcome = request_error(error)
        with self._changed:
            if generation == self._generation:
                self._finished.append(((submitted, outcome), images))
                self._changed.notify_all()
