"""Typed errors. Each carries the HTTP status and error type it maps to; the mapping to a response
body happens in one place (`leap_ray.serve.errors`)."""

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any


def _utf8_safe(text: str | None) -> str | None:
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


class LeapRayError(Exception):
    status_code = 500
    error_type = "internal_error"
    default_code = "internal_error"  # the machine-readable `code` when no more precise one is given

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict[str, Any]:
        """The one error shape every failure leaves the service in. A client's text quoted in it (an
        unknown key with a lone surrogate, say) is escaped, so that the body is always valid UTF-8.
        Beside `error`, the same failure as RFC 9457 problem details (`title`, `detail`, `status`):
        what Replicate's clients read (and FastAPI-style clients read `detail`)."""
        fields = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        error = {name: _utf8_safe(value) for name, value in fields.items()}
        return {
            "error": error,
            "title": HTTPStatus(self.status_code).phrase,
            "detail": error["message"],
            "status": self.status_code,
        }


class InvalidRequest(LeapRayError, ValueError):
    """Bad input. A ValueError so that pydantic validators may raise it and keep `param`."""

    status_code = 422
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class MalformedRequest(LeapRayError):
    """A body that is not JSON at all."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "malformed_body"


class Unauthorized(LeapRayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(LeapRayError):
    """A link that does not hold: expired, or its path, expiry or signature altered."""

    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFound(LeapRayError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class PayloadTooLarge(LeapRayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "body_too_large"


class UnsupportedMediaType(LeapRayError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class TooManyRequests(LeapRayError):
    """Over a per-client limit (requests a second, bodies at once, queued jobs): 429 + Retry-After."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class Overloaded(LeapRayError):
    status_code = 503
    error_type = "overloaded_error"
    default_code = "overloaded"


class ModelUnavailable(LeapRayError):
    status_code = 503
    error_type = "model_unavailable_error"
    default_code = "model_unavailable"


class StoreUnavailable(LeapRayError):
    """The job store (SQLite or Redis) failed or did not answer in time."""

    status_code = 503
    error_type = "unavailable_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="job_store_unavailable")


class RequestTimeout(LeapRayError):
    """The client sent its body too slowly."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "timeout"


class MethodNotAllowed(LeapRayError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class ModelError(LeapRayError):
    """The model failed on this request (e.g. out of memory) though the request was valid. Its
    batch-mates are not affected; a retry may succeed, so it is a 503, not a 500."""

    status_code = 503
    error_type = "model_error"
    default_code = "model_error"


def name_field(error: LeapRayError, names: Mapping[str, str], prefix: str = "") -> None:
    """An error about one of our fields renamed to the field another API's clients gave (`names`:
    ours to theirs, by a field's name or its dotted path, e.g. "refiner.denoising_start"), in its
    `param` (keeping a leading `prefix` such as a job's "input.") and at the head of its message
    (pydantic's "field: why" or "field.0.part: why": their field has no parts, so the whole head
    becomes it). Other errors are left as they are."""
    if error.param is None:
        return
    kept = prefix if prefix and error.param.startswith(prefix) else ""
    ours = error.param.removeprefix(kept).partition(".")[0]
    head, colon, rest = error.message.partition(": ")
    path = head.removeprefix(kept)
    said = bool(colon) and path.partition(".")[0] == ours  # the message starts with our field
    if (theirs := names.get(path if said else ours) or names.get(ours)) is None:
        return
    error.param = f"{kept}{theirs}"
    if said:
        error.message = f"{theirs}: {rest}"


def _most_relevant(errors: list[dict]) -> dict:
    """Pydantic reports a failed union once per member, the plain string's first; a list input is
    better explained by the list member's error ("at most 8 items", not "should be a string")."""
    if isinstance(errors[0].get("input"), list):
        for error in errors:
            if any(str(part).startswith("list[") for part in error.get("loc", ())):
                return error
    return errors[0]


def invalid_request_from(errors: list[dict]) -> LeapRayError:
    """The first of pydantic's validation errors (`ValidationError.errors()`, or FastAPI's, whose
    locations start with where the value came from: body, path, query, header) as an InvalidRequest
    naming the top-level field."""
    first = _most_relevant(errors)
    if first.get("type") == "json_invalid":
        return MalformedRequest(f"the body is not valid JSON: {first.get('msg', '')}", code="json_invalid")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidRequest):
        return cause
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] in ("body", "path", "query", "header"):
        location = location[1:]
    # Union members add their type names to the location; they say nothing a client can act on.
    path = [part for part in location if "[" not in part]
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return InvalidRequest(
        f"{'.'.join(path)}: {message}" if path else message,
        param=path[0] if path and not path[0].isdigit() else None,
        code=first.get("type"),
    )


class NotAcceptable(LeapRayError):
    status_code = 406
    error_type = "not_acceptable_error"
    default_code = "not_acceptable"
