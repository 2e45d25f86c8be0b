"""The one path from the ingress to the model deployments, shared by the HTTP routes, handle calls,
event streams and jobs: validation off the event loop, the model's shape facts (fetched once), seed
fixing, the one retry rule for a replica that died, and the mapping of every failure to a typed error."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from leap_ray.api.common import with_seed
from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest, musicgen_response
from leap_ray.api.progress import Progress
from leap_ray.api.responses import MusicGenResponse, SDXLResponse
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest, sdxl_response
from leap_ray.config import IngressSettings
from leap_ray.serve.bodies import validate_off_loop
from leap_ray.serve.errors import REPLICA_FAILURES, as_leap_error

logger = logging.getLogger("ray.serve")
Output = SDXLOutput | MusicGenOutput


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

    async def prepare(self, service: str, request: Any, param_prefix: str = "") -> Any:
        """The request validated (a dict or a request model; off the loop), checked against the loaded
        model, and with its seed fixed, so that a retry gives the same result."""
        request_type = SERVICES[service].request_type
        try:
            if not isinstance(request, request_type):  # HTTP bodies arrive validated already
                request = await validate_off_loop(request_type, request, param_prefix)
            request.check_against(await self._spec(service))
        except Exception as error:
            raise as_leap_error(error) from None
        return with_seed(request)

    async def generate(self, service: str, request: Any) -> Output:
        """Runs a prepared request, retrying it on another or restarted replica if its replica dies."""
        retries_left = self._settings.replica_failure_retries
        while True:
            response = self._handles[service].generate.remote(request)
            try:
                return await response
            except asyncio.CancelledError:
                # Serve cancels the model call of a cancelled HTTP request itself, but not that of a
                # job's task (no Serve request): say it to the model here.
                response.cancel()
                raise
            except Exception as error:
                retries_left = self._retry_or_raise(service, error, retries_left)

    async def events(self, service: str, request: Any) -> AsyncIterator[Progress | Output]:
        """The model's progress events, then its output. A replica that dies is retried as in
        `generate` (progress then starts again)."""
        retries_left = self._settings.replica_failure_retries
        while True:
            stream = self._handles[service].options(stream=True).generate_stream.remote(request)
            try:
                async for event in stream:
                    yield event
                return
            except (asyncio.CancelledError, GeneratorExit):
                stream.cancel()  # as in `generate`: a job's task is no Serve request
                raise
            except Exception as error:
                retries_left = self._retry_or_raise(service, error, retries_left)

    def _retry_or_raise(self, service: str, error: Exception, retries_left: int) -> int:
        """The retries left after this failure; raises it (typed) when it is not a replica's death or
        none are left."""
        if not isinstance(error, REPLICA_FAILURES) or retries_left == 0:
            raise as_leap_error(error) from None
        logger.warning("a %s replica died mid-request; retrying it (%s)", service, type(error).__name__)
        return retries_left - 1
