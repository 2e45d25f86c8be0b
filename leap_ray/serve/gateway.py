"""The one path from the ingress to the model deployments, shared by the HTTP routes, handle calls,
event streams and jobs: validation off the event loop, the model's shape facts (fetched once), seed
fixing, the one retry rule for a replica that died, and the mapping of every failure to a typed error."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from leap_ray.api.common import with_seed
from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest, musicgen_response
from leap_ray.api.progress import Progress
from leap_ray.api.responses import MusicGenResponse, SDXLResponse
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest, sdxl_response
from leap_ray.config import IngressSettings
from leap_ray.errors import InvalidRequest, LeapRayError
from leap_ray.serve import metrics
from leap_ray.serve.bodies import read_body, validate_off_loop
from leap_ray.serve.errors import REPLICA_FAILURES, as_leap_error

logger = logging.getLogger("ray.serve")
Output = SDXLOutput | MusicGenOutput


def _counted(service: str, error: LeapRayError) -> LeapRayError:
    metrics.requests().inc(tags={"service": service, "outcome": error.error_type})
    return error


def _answered(service: str, output: Any) -> Any:
    """Counts an answer (a request's, and its images or seconds of audio) and gives it back."""
    metrics.requests().inc(tags={"service": service, "outcome": "ok"})
    if isinstance(output, SDXLOutput):
        metrics.images_generated().inc(len(output.images))
    else:
        metrics.audio_seconds_generated().inc(output.duration)
    return output


@dataclass(frozen=True)
class Service:
    """A model the service offers: its name in URLs and jobs, its request type, and how a model's
    output becomes its JSON answer."""

    name: str
    request_type: type[BaseModel]
    response: Callable[[Any], SDXLResponse | MusicGenResponse]


SERVICES = {
    "sdxl": Service("sdxl", SDXLRequest, sdxl_response),
    "musicgen": Service("musicgen", MusicGenRequest, musicgen_response),
}


class ModelGateway:
    def __init__(self, handles: Mapping[str, DeploymentHandle], settings: IngressSettings) -> None:
        self._handles = dict(handles)
        self._settings = settings
        self._specs: dict[str, asyncio.Future] = {}

    def deployment_names(self) -> dict[str, str]:
        """Each service's model deployment, as Serve names it."""
        return {service: handle.deployment_name for service, handle in self._handles.items()}

    async def batch_capacity(self, service: str) -> int:
        """How many requests one replica of the service's model runs at once (its batch)."""
        return await self._handles[service].capacity.remote()

    def _handle(self, service: str, request: Any) -> DeploymentHandle:
        """The model's handle for this request: with its LoRA adapter set as Serve's multiplexed model
        id, so that it goes to a replica already holding those adapters."""
        handle = self._handles[service]
        if isinstance(request, SDXLRequest) and (adapter_set := request.adapter_set()):
            return handle.options(multiplexed_model_id=adapter_set)
        return handle

    async def spec(self, service: str) -> Any:
        """The model's shape facts and what the graph offers (SDXL: its refiner, its adapters)."""
        return await self._spec(service)

    async def _spec(self, service: str) -> Any:
        """The model's shape facts, fetched once from a replica (which may still be loading). One
        shared fetch: concurrent first requests must not each queue a call at the model."""
        if service not in self._specs:
            call = self._handles[service].spec.remote()
            self._specs[service] = asyncio.ensure_future(
                asyncio.wait_for(call, self._settings.spec_timeout_s)
            )
        try:
            return await asyncio.shield(self._specs[service])  # one caller leaving must not cancel it
        except Exception:
            self._specs.pop(service, None)  # the next request asks again
            raise

    async def read(self, request: Request, service: str) -> Any:
        """An HTTP request's body as the service's request (parsed off the event loop); a body that
        fails is counted as that service's request, as `prepare` counts its failures."""
        try:
            return await read_body(request, SERVICES[service].request_type)
        except LeapRayError as error:
            raise _counted(service, error) from None

    async def prepare(self, service: str, request: Any, param_prefix: str = "") -> Any:
        """The request validated (a dict or a request model; off the loop), checked against the loaded
        model, and with its seed fixed, so that a retry gives the same result."""
        request_type = SERVICES[service].request_type
        try:
            if not isinstance(request, request_type):  # HTTP bodies arrive validated already
                request = await validate_off_loop(request_type, request, param_prefix)
            spec = await self._spec(service)
            try:
                request.check_against(spec)
            except InvalidRequest as error:
                if param_prefix and error.param:  # the model's checks name the field alone
                    error.param = f"{param_prefix}.{error.param}"
                raise
        except Exception as error:
            raise _counted(service, as_leap_error(error)) from None
        return with_seed(request)

    async def generate(self, service: str, request: Any) -> Output:
        """Runs a prepared request, retrying it on another or restarted replica if its replica dies."""
        retries_left = self._settings.replica_failure_retries
        while True:
            response = self._handle(service, request).generate.remote(request)
            try:
                return _answered(service, await response)
            except asyncio.CancelledError:
                # Serve cancels the model call of a cancelled HTTP request itself, but not that of a
                # job's task (no Serve request): say it to the model here.
                response.cancel()
                metrics.cancelled().inc()
                raise
            except Exception as error:
                retries_left = self._retry_or_raise(service, error, retries_left)

    async def events(self, service: str, request: Any) -> AsyncIterator[Progress | Output]:
        """The model's progress events, then its output. A replica that dies is retried as in
        `generate` (progress then starts again)."""
        retries_left = self._settings.replica_failure_retries
        started, first = time.perf_counter(), True
        while True:
            stream = self._handle(service, request).options(stream=True).generate_stream.remote(request)
            try:
                async for event in stream:
                    if isinstance(event, Progress) and first:
                        metrics.first_progress_seconds().observe(
                            time.perf_counter() - started, {"service": service}
                        )
                        first = False
                    yield event if isinstance(event, Progress) else _answered(service, event)
                return
            except (asyncio.CancelledError, GeneratorExit):
                stream.cancel()  # as in `generate`: a job's task is no Serve request
                metrics.cancelled().inc()
                raise
            except Exception as error:
                retries_left = self._retry_or_raise(service, error, retries_left)

    def _retry_or_raise(self, service: str, error: Exception, retries_left: int) -> int:
        """The retries left after this failure; raises it (typed) when it is not a replica's death or
        none are left."""
        if not isinstance(error, REPLICA_FAILURES) or retries_left == 0:
            raise _counted(service, as_leap_error(error)) from None
        logger.warning("a %s replica died mid-request; retrying it (%s)", service, type(error).__name__)
        return retries_left - 1
