"""Every failure leaves the service in one shape, `{"error": {"message", "type", "param", "code"}}`,
mapped here from typed errors, validation errors and Ray's own errors."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException

from leap_ray.errors import (
    Forbidden,
    LeapRayError,
    MalformedRequest,
    MethodNotAllowed,
    ModelUnavailable,
    NotFound,
    Overloaded,
    invalid_request_from,
)

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1
# What a handle call raises when the replica serving it died.
REPLICA_FAILURES = (ActorDiedError, ActorUnavailableError, RayActorError)


def as_leap_error(error: BaseException) -> LeapRayError:
    """The typed error behind anything a handle call or a route raised."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    if isinstance(error, LeapRayError):
        return error
    if isinstance(error, HTTPException) and 400 <= error.status_code < 500:
        return HTTP_ERRORS.get(error.status_code, MalformedRequest)(str(error.detail))
    if isinstance(error, TimeoutError):
        return ModelUnavailable("the model deployment did not come up in time", code="model_timeout")
    if isinstance(error, BackPressureError):
        return Overloaded("the service is at capacity; retry after a moment", code="queue_full")
    if isinstance(error, DeploymentUnavailableError):
        return ModelUnavailable("the model deployment is not available", code="deployment_unavailable")
    if isinstance(error, REPLICA_FAILURES):
        return ModelUnavailable("the model replica serving this request failed", code="replica_failed")
    logger.exception("unexpected error", exc_info=error)
    return LeapRayError("internal error")


# Starlette's own errors (no route, wrong method, other 4xx) in our shape.
HTTP_ERRORS: dict[int, type[LeapRayError]] = {403: Forbidden, 404: NotFound, 405: MethodNotAllowed}


def error_response(error: LeapRayError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status_code in (429, 503) else None
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def validation_failed(_: Request, error: RequestValidationError) -> JSONResponse:
        # Built from our own message only: echoing the input could put NaN into the JSON.
        return error_response(invalid_request_from(list(error.errors())))

    async def failed(_: Request, error: Exception) -> JSONResponse:
        return error_response(as_leap_error(error))

    app.add_exception_handler(RequestValidationError, validation_failed)
    # Our typed errors by class: Starlette answers them and stops. The catch-all answers anything
    # else as a 500 in the same shape, and Starlette then re-raises it so that Serve logs it.
    app.add_exception_handler(LeapRayError, failed)
    app.add_exception_handler(HTTPException, failed)
    app.add_exception_handler(Exception, failed)
