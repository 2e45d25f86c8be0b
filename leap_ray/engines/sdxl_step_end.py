"""What happens at the end of each of a request's denoising steps in the step batch, as diffusers' loop
body does it for a solo call: the request's `callback_on_step_end` on its tensors (what it returns is
applied by name), then its stop check, then its progress event (with a latent preview every
`preview_every` steps).

A callback that raises or returns what diffusers could not apply fails its own request (422,
callback_error); a stop check or progress hook that raises fails it with an internal error. Either
way the run is finished, and its batch-mates go on as if it had behaved."""

from typing import Any

import torch

from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import CALLBACK_TENSOR_INPUTS, guidance_is_on
from leap_ray.engines.failures import internal_error
from leap_ray.engines.sdxl_decode import latent_preview
from leap_ray.engines.sdxl_pipelines import PipelineView
from leap_ray.engines.sdxl_runs import Run
from leap_ray.errors import InvalidRequest, LeapRayError

# The run's fields a callback may read and replace, by diffusers' names for them.
CALLBACK_TENSORS = dict(
    zip(CALLBACK_TENSOR_INPUTS, ("latents", "prompt_embeds", "text_embeds", "time_ids"), strict=True)
)


class RequestPipelineView(PipelineView):
    """What a request's callback sees as `pipeline`: the real pipeline, but with this request's guidance
    scale and number of steps, and an `_interrupt` flag (diffusers' way for a callback to stop the
    call) that stops this request only."""

    def __init__(self, pipeline: Any, guidance_scale: float, num_timesteps: int) -> None:
        super().__init__(pipeline, _guidance_scale=guidance_scale, _interrupt=False)
        self.num_timesteps = num_timesteps

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return guidance_is_on(self._guidance_scale)

    @property
    def interrupt(self) -> bool:
        return self._interrupt


def end_step(run: Run, pipeline: Any, timestep: torch.Tensor) -> None:
    """After the run's step `run.step`: its callback, stop check and progress. A failure is the run's
    error; a stop sets its `stopped_at_step`."""
    admitted = run.admitted
    try:
        stopped = run.request.callback_on_step_end is not None and call_back(run, pipeline, timestep)
        if stopped or (admitted.should_stop is not None and admitted.should_stop()):
            run.stopped_at_step = run.step
        elif admitted.progress is not None:
            every = run.request.preview_every
            preview = latent_preview(run.latents[0]) if every and (run.step + 1) % every == 0 else None
            admitted.progress(StepProgress(run.step + 1, len(run.timesteps), float(timestep), preview))
    except LeapRayError as error:
        run.error = error
    except Exception as error:
        run.error = internal_error(error)


def call_back(run: Run, pipeline: Any, timestep: torch.Tensor) -> bool:
    """Runs the request's callback and applies what it returned; True when it stopped its request.
    Raises InvalidRequest (callback_error) when the callback fails."""
    request = run.request
    view = RequestPipelineView(pipeline, request.guidance_scale, len(run.timesteps))
    tensors = {name: getattr(run, field) for name, field in CALLBACK_TENSORS.items()}
    listed = {name: tensors[name] for name in request.callback_on_step_end_tensor_inputs}
    try:
        returned = request.callback_on_step_end(view, run.step, timestep, listed)
    except Exception as error:
        raise callback_error(f"raised {type(error).__name__} at step {run.step}: {error}") from error
    for name, value in checked(returned, tensors).items():
        setattr(run, CALLBACK_TENSORS[name], value.to(tensors[name].device))
    return view.interrupt


def checked(returned: object, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a callback returned, as diffusers applies it: by name, for any of the callback tensors
    whether the callback listed it or not, each of the shape and dtype of the request's own. Nothing
    is applied unless all of it is good."""
    if returned is None:
        return {}
    if not isinstance(returned, dict):
        raise callback_error(f"returned {describe(returned)}, not a dict of tensors")
    good = {}
    for name in (name for name in tensors if name in returned):
        value, own = returned[name], tensors[name]
        if not isinstance(value, torch.Tensor) or value.shape != own.shape or value.dtype != own.dtype:
            raise callback_error(f"returned {name} as {describe(value)}, not {describe(own)}")
        good[name] = value
    return good


def callback_error(message: str) -> InvalidRequest:
    return InvalidRequest(
        f"callback_on_step_end {message}", param="callback_on_step_end", code="callback_error"
    )


def describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
