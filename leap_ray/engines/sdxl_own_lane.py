"""The step batch's own lane for big images: their runs step on a thread of their own (on a GPU, on a
CUDA stream of their own), so that no step of the main lane waits for one of theirs.

Why a lane and not a smaller slice: a UNet call or a VAE decode cannot be cut without changing the
image (a tiled decode blends its tiles), and one call at 2048² costs as much as hundreds of steps at
512² (attention grows with the square of the pixels). In one lane, every request behind such a call
waits for the whole of it; in two, the big runs share the hardware with the others instead of
holding them. Big runs still share UNet calls among themselves, in their lane.

What the two lanes share is made safe as follows. The UNet and VAE are only read by a forward pass.
LoRA rows act per thread (`sdxl_lora_rows`). What changes the modules (loading, evicting or switching
adapters) takes the engine's `model_lock`, which this lane holds for each of its UNet calls (not its
starts, callbacks or decodes): a change waits for the big UNet call in flight, and the main lane's
plain steps never wait on it. Image starts take the engine's `encoding` lock (diffusers casts the
shared VAE as it encodes). An engine whose adapters act per request set rather than per row has no
own lane (`own_lane_above` None).

A run of this lane whose images are to be watermarked goes on to the batch's marking workers
(`sdxl_marking.Marking`), its outcome taken from there: its images leave this lane's count as they
enter the marking's, under both locks, so that the batch counts each image once until its outcome is
taken."""

import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from leap_ray.engines.contract import Outcome
from leap_ray.engines.failures import request_error
from leap_ray.engines.sdxl_lane import Denoiser, Lane
from leap_ray.engines.sdxl_marking import HeldOutcomes, Marking
from leap_ray.engines.sdxl_runs import Admitted
from leap_ray.errors import LeapRayError

logger = logging.getLogger(__name__)


class OwnLane(HeldOutcomes):
    """Runs handed over (`hand`) start and step here, on the lane's thread; their outcomes are taken
    (`take`) by the thread that drives the step batch, which settles them as its own."""

    def __init__(self, engine: Denoiser, marking: Marking) -> None:
        """`marking`: the batch's marking workers, where this lane's runs to watermark go on."""
        self.marking = marking
        # Its UNet calls hold the engine's model lock (see above); its marked runs go through `submit`.
        self.lane = Lane(engine, unet_lock=engine.model_lock, marking=self)
        self.stream = torch.cuda.Stream(engine.device) if engine.device.type == "cuda" else None
        super().__init__()  # its held images: handed over, not being marked, outcomes not taken
        self._arrived: list[Admitted] = []
        self._starting: list[Admitted] = []  # taken from _arrived, not yet in lane.runs
        self._stepping = 0  # the generation of the step in flight
        self._marked: set[int] = set()  # ids of the requests that this step sent to the marking
        self._thread: threading.Thread | None = None

    @property
    def load(self) -> int:
        """Images handed over whose outcomes were not taken yet and that are not being marked."""
        return self.held

    def load_with_marking(self) -> int:
        """This lane's load and the marking's together, read at one moment: an image on its way from
        one to the other is counted once."""
        with self.changed:
            return self.held + self.marking.load

    def submit(self, submitted: Any, images: int, finish: Callable[[], Any]) -> None:
        """A run of this lane to watermark (its lane's `Marker`): on to the marking workers, its
        images moving from this lane's count to theirs at once."""
        with self.changed:
            if self._stepping != self.generation:
                return  # cleared meanwhile: the driver failed the request already
            self.marking.submit(submitted, images, finish)
            self.held -= images
            self._marked.add(id(submitted))

    def admitted(self) -> list[Admitted]:
        """The requests in the lane, arrived or running (a snapshot)."""
        with self.changed:
            # Those starting too: their adapters must not be evicted while they wait for the lock.
            return [*self._arrived, *self._starting, *(run.admitted for run in list(self.lane.runs))]

    def hand(self, admitted: Admitted) -> None:
        """Takes the admitted request (its prompts encoded) to start and step here."""
        if self.stream is not None:  # its embeddings were made on the driving thread's stream
            self.stream.wait_stream(torch.cuda.current_stream(self.lane.engine.device))
            for tensor in admitted.embeds:
                if tensor is not None:
                    tensor.record_stream(self.stream)
        with self.changed:
            self._arrived.append(admitted)
            self.held += admitted.count
            self.changed.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="own-lane-steps", daemon=True)
                self._thread.start()

    def clear(self) -> None:
        """Forgets every request (the driver failed them all); a step in flight is dropped when done."""
        with self.changed:
            self.forget()
            self._arrived.clear()
            self.lane.runs = []

    def _loop(self) -> None:
        stream = torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()
        with torch.inference_mode(), stream:  # both are per thread
            while True:
                with self.changed:
                    while not self._arrived and not self.lane.runs:
                        self.changed.wait()
                    arrived, self._arrived, generation = self._arrived, [], self.generation
                    self._starting, self._stepping = arrived, generation
                    self._marked = set()
                self._finish(self._step(arrived), generation)

    def _step(self, arrived: list[Admitted]) -> list[tuple[Outcome, int]]:
        """Starts the arrived runs, then steps the lane; a fault of the lane fails its own requests."""
        held = [*arrived, *(run.admitted for run in self.lane.runs)]
        try:
            failed = [self._start(admitted) for admitted in arrived]
            finished = [outcome for outcome in failed if outcome is not None] + self.lane.step()
        except Exception as error:
            logger.error("the own lane's step failed; its requests fail with it", exc_info=error)
            self.lane.runs = []
            failure = LeapRayError("internal error", code="internal_error")
            with self.changed:  # those already sent to the marking get their outcome from there
                held = [each for each in held if id(each.submitted) not in self._marked]
            return [((each.submitted, failure), each.count) for each in held]
        counts = {id(each.submitted): each.count for each in held}
        return [(outcome, counts[id(outcome[0])]) for outcome in finished]

    def _start(self, admitted: Admitted) -> Outcome | None:
        """Starts the admitted request's run in the lane, or returns its failure."""
        try:
            if admitted.error is not None:
                raise admitted.error
            self.lane.runs.append(self.lane.engine.start(admitted))
        except Exception as error:
            return admitted.submitted, request_error(error)
        return None

    def _finish(self, finished: list[tuple[Outcome, int]], generation: int) -> None:
        with self.changed:
            self._starting = []
            if generation == self.generation:
                self.outcomes += finished
            else:  # cleared meanwhile: what it stepped was failed already
                self.lane.runs = []
            if finished:
                self.changed.notify_all()
