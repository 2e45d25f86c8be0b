"""The contract between a model engine and the deployment that serves it (`leap_ray.serve`): what a
deployment may call, and what it may rely on. Engines are plain Python and never import Ray; a fake
or simulated engine that keeps this contract stands in for a real one.

An engine is a loaded model and a factory of running batches. A running batch is driven by one
thread (the deployment's step scheduler): between two steps it may `admit` requests, then `step`
runs one step (an SDXL denoising step, a MusicGen token) of every request in it and hands back the
outcome of each request that finished. Whole-request batches are the same thing with admission only
into an empty batch (`run_to_end` below, and `batching: request` in a deployment's config)."""

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from leap_ray.api.progress import Progress
from leap_ray.errors import LeapRayError

Request = TypeVar("Request")
Spec = TypeVar("Spec", covariant=True)
Result = TypeVar("Result")

StopCheck = Callable[[], bool]
"""Asked after every step of one request; True makes that request leave its batch (its cancellation)."""

ProgressHook = Callable[[Progress], None]
"""Told about one request's progress: StepProgress (SDXL) or AudioProgress and, for a streamed track,
AudioDelta (MusicGen)."""

Outcome = tuple[Request, Result | LeapRayError]
"""A finished request and its result, or the error that this request alone met."""


@runtime_checkable
class RunningBatch(Protocol[Request, Result]):
    """The requests a replica is running now, stepped together.

    What a driver may rely on:
    - `admit` checks the request against the model and takes it in, to join at the next step; it
      returns the error this request alone met (the request is then not in the batch), else None.
    - `step` runs one step of every request in the batch and returns the outcome of each request
      that finished at it, in any order; each admitted request comes back exactly once.
    - One request never fails another. A request whose own input the model cannot use gets an
      `InvalidRequest` naming the parameter; a genuine model fault gets a `ModelError` (503, code
      "model_error"). When a call shared by several requests faults, each is run alone for that step,
      so the innocent go on and only the culprit fails. `step` raises only for a fault of the batch
      itself; the driver then fails every request in it and calls `clear`.
    - A seeded request gives the same output whatever joins or leaves the batch meanwhile (to within
      the rounding of batched arithmetic).
    - A request's stop check is asked after each of its steps: True makes it leave at that step (its
      result says so). Its progress hook is told of its progress as it goes. A hook that raises
      fails its own request only, with an internal error (500).
    """

    max_load: int
    """The most `load` the driver will let in (max_batch_size); a batch may size caches by it."""

    @property
    def load(self) -> int:
        """What the admitted requests hold against `max_load` (SDXL: images; MusicGen: tracks); 0: idle."""

    def cost(self, request: Request) -> int:
        """What the request would add to `load`."""

    def can_join(self, request: Request) -> bool:
        """Whether the request fits beside those running, besides its cost (e.g. a model's cache)."""

    def admit(
        self, request: Request, should_stop: StopCheck | None = None, progress: ProgressHook | None = None
    ) -> LeapRayError | None: ...

    def step(self) -> list[Outcome]: ...

    def clear(self) -> None:
        """Forgets every request (after a fault of the batch itself)."""

    def close(self) -> None:
        """Lets go of what the batch holds besides its requests (worker threads), once it will not be
        stepped again: by whoever made it and is done with it."""


@runtime_checkable
class Engine(Protocol[Request, Spec, Result]):
    """A loaded model. `spec()` describes what it accepts (requests check themselves against it);
    `running_batch(max_load)` makes the running batch a replica drives (one per replica)."""

    def spec(self) -> Spec: ...

    def running_batch(self, max_load: int) -> RunningBatch[Request, Result]: ...


def run_to_end(
    batch: RunningBatch[Request, Result],
    requests: Sequence[Request],
    should_stop: Sequence[StopCheck | None] | None = None,
    progress: Sequence[ProgressHook | None] | None = None,
) -> list[Result | LeapRayError]:
    """Runs the requests to their end in `batch`, admitted in order as a replica admits them (while
    they fit its `max_load` and `can_join`): one entry per request, in order, its result or its own
    error. What plain-Python callers (tests, benchmarks, notebooks) use in place of a replica's
    batcher. A fault of the batch itself is raised, the batch cleared."""
    waiting = deque(enumerate(requests))
    results: list[Result | LeapRayError | None] = [None] * len(requests)
    running: dict[int, deque[int]] = defaultdict(deque)  # by identity: one object may come twice
    while waiting or batch.load:
        while waiting and fits(batch, waiting[0][1]):
            index, request = waiting.popleft()
            hooks = (should_stop[index] if should_stop else None, progress[index] if progress else None)
            if (error := batch.admit(request, *hooks)) is not None:
                results[index] = error
            else:
                running[id(request)].append(index)
        try:
            finished = batch.step() if batch.load else []
        except Exception:
            batch.clear()
            raise
        for request, outcome in finished:
            results[running[id(request)].popleft()] = outcome
    return results


def fits(batch: RunningBatch[Request, Result], request: Request) -> bool:
    """Whether the request may join the batch now: an empty batch takes any."""
    if not batch.load:
        return True
    return batch.load + batch.cost(request) <= batch.max_load and batch.can_join(request)


def generate(
    engine: Engine[Request, object, Result],
    requests: Sequence[Request],
    should_stop: Sequence[StopCheck | None] | None = None,
    progress: Sequence[ProgressHook | None] | None = None,
) -> list[Result | LeapRayError]:
    """The engine's results for the requests, run together in a running batch of its own, big enough
    for all of them at once."""
    batch = engine.running_batch(1)
    batch.max_load = max(1, sum(batch.cost(request) for request in requests))
    try:
        return run_to_end(batch, requests, should_stop, progress)
    finally:
        batch.close()
