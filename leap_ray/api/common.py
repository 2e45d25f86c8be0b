"""Field types shared by the request models."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

MAX_SEED = 2**53 - 1  # the largest integer every JSON client keeps exactly


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or only white space")
    return text


def prompt_text(max_chars: int) -> type[str]:
    """A non-blank prompt of at most `max_chars` characters."""
    return Annotated[str, Field(min_length=1, max_length=max_chars), AfterValidator(_not_blank)]  # type: ignore[return-value]


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

    error: ErrorDetail
