"""Step-level (continuous) batching for SDXL: requests join and leave a running batch at every
denoising step, so a short request never waits for a long one to finish. The base model and the
refiner each run one (in their own deployments); each engine brings its own way to admit and start a
request (`sdxl_lane.Denoiser`), and the batch does the rest.

The batch has two lanes (`sdxl_lane.Lane`): the main one, stepped by the thread that drives the
batch, and an own lane for images of more than the engine's `own_lane_above` pixels, stepped on a
thread of its own (`sdxl_own_lane.OwnLane`), so that a small request never waits for a big image's
UNet call or decode."""

from typing import Any

import torch

from leap_ray.engines.contract import Outcome, ProgressHook, StopCheck
from leap_ray.engines.failures import request_error
from leap_ray.engines.sdxl_lane import Denoiser, Lane
from leap_ray.engines.sdxl_marking import Marking
from leap_ray.engines.sdxl_own_lane import OwnLane
from leap_ray.engines.sdxl_runs import Admitted
from leap_ray.errors import LeapRayError

# SDXL's own size: its trained aspect buckets (1152×896, 1216×832, ...) have at most as many pixels.
OWN_LANE_ABOVE = 1024 * 1024


class StepBatch:
    """The running batch of one replica (a `RunningBatch`), driven by one thread: `admit` requests
    between steps, call `step` while `load` is not 0, take each finished request's outcome from
    `step`'s return. Requests admitted between two steps join at the next one, their prompts encoded
    together."""

    def __init__(self, engine: Denoiser, max_load: int = 8) -> None:
        self.engine = engine
        self.max_load = max_load
        self.joining: list[Admitted] = []
        self.marking = Marking()  # SDXL's watermark, off the lanes' threads
        self.lane = Lane(engine, marking=self.marking)
        self.own_lane = OwnLane(engine, self.marking) if engine.own_lane_above is not None else None

    @property
    def load(self) -> int:
        """What the batch holds against max_batch_size: its images, joining, running or being marked
        (until their outcomes are taken)."""
        # The own lane hands images to the marking on its thread: both counts are read at one moment.
        elsewhere = self.own_lane.load_with_marking() if self.own_lane is not None else self.marking.load
        joining = sum(admitted.count for admitted in self.joining)
        return joining + self.lane.load + elsewhere

    @property
    def unet_calls(self) -> int:
        return self.lane.unet_calls + (self.own_lane.lane.unet_calls if self.own_lane is not None else 0)

    def clear(self) -> None:
        self.joining.clear()
        self.lane.runs.clear()
        if self.own_lane is not None:  # first: no run of its old steps reaches the marking after this
            self.own_lane.clear()
        self.marking.clear()

    def close(self) -> None:
        """Stops the watermark's workers (the replica is going away); markings in flight still end."""
        self.marking.close()

    @staticmethod
    def cost(request: Any) -> int:
        return request.image_count

    def can_join(self, request: Any) -> bool:
        """Besides its images: its LoRA adapters and those of the requests in the batch must all fit in
        the replica at once (else one would be unloaded and reloaded at every step)."""
        return self.engine.can_join(request, self.adapters_in_use())

    def adapters_in_use(self) -> set[str]:
        admitted = [*self.joining, *(run.admitted for run in self.lane.runs)]
        if self.own_lane is not None:
            admitted += self.own_lane.admitted()
        return {name for each in admitted for name, _ in each.request.lora_scales()}

    @torch.inference_mode()
    def admit(
        self, request: Any, should_stop: StopCheck | None = None, progress: ProgressHook | None = None
    ) -> LeapRayError | None:
        """Adds the request to the batch, to join at the next step, or returns the error that it
        alone met (the model cannot take it)."""
        try:
            self.joining.append(self.engine.admit(request, should_stop, progress, self.adapters_in_use()))
        except Exception as error:
            return request_error(error)
        return None

    @torch.inference_mode()
    def step(self) -> list[Outcome]:
        """One denoising step of every request in the main lane (a UNet call per shared shape), then
        the outcome of each request that finished, in either lane: its images (or latents for the
        refiner), or its own error, and those whose images were watermarked meanwhile. With nothing
        in the main lane, it waits a moment for the own lane or the watermark."""
        finished = self.join()
        if self.lane.runs:
            finished += self.lane.step()
        idle = not self.lane.runs and not finished
        if self.own_lane is not None:
            finished += self.own_lane.take(wait=idle)
            idle = idle and not finished and not self.own_lane.load
        return finished + self.marking.take(wait=idle)

    def join(self) -> list[Outcome]:
        """The joining requests start running, big images in the own lane: their prompts encoded
        together, their start made. Returns the outcomes of those that failed."""
        joining, self.joining, failed = self.joining, [], []
        self.engine.prompts.encode(joining)
        for admitted in joining:
            if self.own_lane is not None and admitted.error is None and self.is_big(admitted):
                self.own_lane.hand(admitted)
                continue
            try:
                if admitted.error is not None:
                    raise admitted.error
                self.lane.runs.append(self.engine.start(admitted))
            except Exception as error:
                failed.append((admitted.submitted, request_error(error)))
        return failed

    def is_big(self, admitted: Admitted) -> bool:
        """Whether the request's images have more pixels than the main lane takes."""
        request = admitted.request
        return request.width * request.height > self.engine.own_lane_above
