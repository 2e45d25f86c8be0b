"""The contract between a model engine and the deployment that serves it (`leap_ray.serve`): what a
deployment may call, and what it may rely on. Engines are plain Python and never import Ray; a fake
engine that keeps this contract can stand in for a real one."""

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from leap_ray.api.progress import Progress
from leap_ray.errors import LeapRayError

Request = TypeVar("Request", contravariant=True)
Spec = TypeVar("Spec", covariant=True)
Result = TypeVar("Result")

StopCheck = Callable[[], bool]
"""Asked after every step of one request; True makes that request leave its batch early."""

ProgressHook = Callable[[Progress], None]
"""Told about one request's progress: StepProgress (SDXL) or AudioProgress (MusicGen)."""


@runtime_checkable
class Engine(Protocol[Request, Spec, Result]):
    """A loaded model that runs batches of validated requests from different users.

    What a deployment may rely on:
    - `spec()` describes what the loaded model accepts; requests check themselves against it.
    - `generate` returns one entry per request, in order: its result, or the `LeapRayError` that this
      request alone met. It raises nothing but BaseExceptions such as KeyboardInterrupt.
    - One request never fails another. A request whose own input the model cannot use gets an
      `InvalidRequest` naming the parameter; a genuine model fault gets a `ModelError` (503, code
      "model_error"). When a call shared by several requests faults, each is rerun alone (its
      progress events and callbacks start that call again), so the innocent still get their results
      and only the culprit fails.
    - A seeded request gives the same output whatever else shares its batch (to within the rounding
      of batched arithmetic), and exactly its solo output when it had to be rerun alone.
    - `should_stop[i]` is asked after every step of request i: True ends that request early (its
      result says so). `progress[i]` is told of request i's progress as it goes. A hook that raises
      fails its own request only, with an internal error (500).
    """

    def spec(self) -> Spec: ...

    def generate(
        self,
        requests: Sequence[Request],
        should_stop: Sequence[StopCheck | None] | None = None,
        progress: Sequence[ProgressHook | None] | None = None,
    ) -> list[Result | LeapRayError]: ...
