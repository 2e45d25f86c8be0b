"""How an engine keeps one request's failure to that request: the typed error it gets, and the rerun
that tells a shared call's culprit from its innocent batch-mates. Both engines follow these rules, so
the same failure reads the same whichever model met it."""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, TypeVar

import torch

from leap_ray.errors import InvalidRequest, LeapRayError, ModelError

logger = logging.getLogger(__name__)


def is_resource_fault(error: BaseException) -> bool:
    """Out of memory is the machine's fault whatever the input: a retry, or a smaller batch, may pass."""
    return isinstance(error, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(error)


def model_error(error: BaseException) -> ModelError:
    """A genuine model fault on a valid request. The traceback goes to the operator's log only."""
    logger.error("model fault on a request", exc_info=error)
    return ModelError(
        f"the model failed on this request ({type(error).__name__}); a retry may succeed", code="model_error"
    )


def internal_error(error: BaseException) -> LeapRayError:
    """A fault in the service's own per-request hooks (stop checks, progress): neither the request's
    nor the model's."""
    logger.error("a request's hook failed", exc_info=error)
    return LeapRayError("internal error", code="internal_error")


def request_error(error: Exception) -> LeapRayError:
    """The error a request gets for an exception raised while working on it alone: already typed
    errors pass, anything else is the model's fault."""
    return error if isinstance(error, LeapRayError) else model_error(error)


@contextmanager
def blame(param: str) -> Iterator[None]:
    """Work on one request's own input (`param`): its failures become InvalidRequest naming the
    parameter, except resource faults, which are the model's."""
    try:
        yield
    except LeapRayError:
        raise
    except Exception as error:
        if is_resource_fault(error):
            raise model_error(error) from error
        raise InvalidRequest(
            f"{param} could not be used: {error}", param=param, code="invalid_input"
        ) from error


class Rerunnable(Protocol):
    """A request inside a shared model call whose work starts from the request alone (a rerun repeats
    it from the start)."""

    error: LeapRayError | None


Member = TypeVar("Member", bound=Rerunnable)


def run_shared(members: Sequence[Member], run: Callable[[list[Member]], None]) -> None:
    """Runs `members` together in one call. If the call raises, each member that had not already
    failed on its own is run alone: the innocent get exactly their solo result, and only one that
    faults alone fails (a typed error as raised, anything else as ModelError). Retrying alone also
    answers out-of-memory for the batch as a whole. (The step batches apply the same rule to their
    UNet and decoder steps, where a rerun is one step of the runs alone.)"""
    try:
        run(list(members))
    except Exception as error:
        if len(members) == 1:
            members[0].error = request_error(error)
            return
        logger.warning("a call of %d requests failed (%r); running them one at a time", len(members), error)
        for member in members:
            if member.error is None:
                run_shared([member], run)
