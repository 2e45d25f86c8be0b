"""Field types and small rules shared by the request models."""

import secrets
from typing import Annotated, TypeVar

from pydantic import BaseModel, Field

MAX_SEED = 2**53 - 1  # the largest integer every JSON client keeps exactly
# SDXL's samplers by name (the request's `scheduler`); here, without torch, for the CLI's --scheduler.
SCHEDULERS = ("ddim", "euler", "euler_ancestral", "dpmpp_2m")


def draw_seed() -> int:
    """A random seed in the accepted range [0, MAX_SEED]: the one place seeds are drawn."""
    return secrets.randbelow(MAX_SEED + 1)


def offset_seed(seed: int, offset: int) -> int:
    """The seed `offset` places after `seed`, wrapping past MAX_SEED to 0, so that every seed the
    service returns is one it accepts (and one JavaScript keeps exactly)."""
    return (seed + offset) % (MAX_SEED + 1)


Request = TypeVar("Request", bound=BaseModel)


def with_seed(request: Request) -> Request:
    """The request with its `seed` fixed (drawn when absent), so that a retry repeats it."""
    return request if request.seed is not None else request.model_copy(update={"seed": draw_seed()})  # type: ignore[attr-defined]


def prompt_text(max_chars: int) -> type[str]:
    """A prompt of at most `max_chars` characters. Empty is allowed, as diffusers and transformers
    allow it: the model then gets its empty-text conditioning."""
    return Annotated[str, Field(max_length=max_chars)]  # type: ignore[return-value]


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
EVENT_STREAM = "text/event-stream"  # the media type of progress events


def capped(default: float, limit: float) -> float:
    """A default that stays within an operator's lower limit."""
    return min(default, limit)


class ErrorDetail(BaseModel):
    message: str = Field(description="What is wrong, for a person.")
    type: str = Field(description="invalid_request_error, authentication_error, overloaded_error, ...")
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str | None = Field(description="A machine-readable reason, when there is one.")


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail = Field(description="What went wrong: message, type, param (the field), code.")
    title: str = Field(
        description="Problem details (RFC 9457), as Replicate's clients read them: the HTTP status's phrase."
    )
    detail: str = Field(description="Problem details: the error's message.")
    status: int = Field(description="Problem details: the HTTP status.")
