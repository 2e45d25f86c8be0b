"""The ingress deployment: validates every request and routes it to the model deployments; it holds
no model. Its HTTP app is built per replica, in one function, from the replica's own parts: the model
gateway (shared by HTTP, handles, streams and jobs) and the jobs.

Python users reach the same paths through a handle: `serve.get_app_handle("leap_ray").sdxl.remote(r)`
and `.musicgen.remote(r)`, with a request model or a dict (tensors and callables allowed)."""

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from ray import serve
from ray.serve.handle import DeploymentHandle

from leap_ray.api.a1111 import A1111Img2ImgRequest, A1111Txt2ImgRequest
from leap_ray.api.files import FileUpload
from leap_ray.api.jobs import JobSubmission
from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest
from leap_ray.api.openai_images import OpenAIImageEditRequest, OpenAIImageRequest
from leap_ray.api.predictions import PredictionRequest
from leap_ray.api.progress import AudioDelta, AudioProgress
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest
from leap_ray.config import LIMITS, IngressSettings, UploadLimits
from leap_ray.serve.a1111_routes import a1111_routes
from leap_ray.serve.autoscaling import QUEUED_JOBS
from leap_ray.serve.docs import docs_routes
from leap_ray.serve.errors import install_error_handlers
from leap_ray.serve.file_routes import file_routes
from leap_ray.serve.gateway import ModelGateway
from leap_ray.serve.jobs.capacity import ModelCapacity
from leap_ray.serve.jobs.routes import job_routes
from leap_ray.serve.jobs.service import Jobs
from leap_ray.serve.memory import return_big_buffers
from leap_ray.serve.middleware import OPEN_PATHS, ApiKeyAuth, RequestGuard
from leap_ray.serve.openai_routes import openai_routes
from leap_ray.serve.playground import playground_routes
from leap_ray.serve.predictions_routes import prediction_routes
from leap_ray.serve.replicate_model_routes import replicate_model_routes
from leap_ray.serve.routes import generation_routes, health_routes

# Request models of the routes that parse their own bodies (off the event loop), for /openapi.json.
BODY_MODELS = (
    SDXLRequest,
    MusicGenRequest,
    JobSubmission,
    OpenAIImageRequest,
    OpenAIImageEditRequest,
    PredictionRequest,
    FileUpload,
    A1111Txt2ImgRequest,
    A1111Img2ImgRequest,
)
BEARER = {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key of the service."}}


def openapi_schema(app: FastAPI, auth_on: bool) -> dict[str, Any]:
    """FastAPI's schema, plus the request bodies and the bearer scheme (required but on open paths
    when keys are configured)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in BODY_MODELS], ref_template="#/components/schemas/{model}"
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(definitions["$defs"])
        components["securitySchemes"] = BEARER
        if auth_on:
            schema["security"] = [{"bearer": []}]
            for path in OPEN_PATHS & schema["paths"].keys():
                for operation in schema["paths"][path].values():
                    operation["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema


def build_http_app(
    gateway: ModelGateway, jobs: Jobs, settings: IngressSettings, uploads: UploadLimits = LIMITS.uploads
) -> FastAPI:
    app = FastAPI(
        generate_unique_id_function=lambda route: route.name,  # operation ids: the handlers' names
        docs_url=None,  # served by docs_routes, from packaged files rather than a CDN
        redoc_url=None,
        title="leap_ray",
        version="0.1.0",
        description="Stable Diffusion XL images and MusicGen music on Ray Serve. Errors have the shape "
        '`{"error": {"message", "type", "param", "code"}}`.',
    )
    install_error_handlers(app)
    app.include_router(generation_routes(gateway))
    app.include_router(job_routes(jobs))
    app.include_router(openai_routes(gateway, jobs))
    app.include_router(a1111_routes(gateway))
    app.include_router(prediction_routes(jobs))
    app.include_router(file_routes(jobs))
    app.include_router(replicate_model_routes())
    app.include_router(health_routes(gateway))
    app.include_router(docs_routes(app.title))
    app.include_router(playground_routes())
    keys, admin_keys = settings.load_api_keys(), settings.load_admin_keys()
    app.openapi = lambda: openapi_schema(app, auth_on=bool(keys or admin_keys))  # type: ignore[method-assign]
    # The last added runs first: keys are checked before any body is read.
    app.add_middleware(RequestGuard, max_body_bytes=LIMITS.max_body_bytes, uploads=uploads)
    app.add_middleware(ApiKeyAuth, keys=keys, admin_keys=admin_keys, check_link=jobs.links.signer.verify)
    return app


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, sdxl: DeploymentHandle, musicgen: DeploymentHandle, settings: IngressSettings) -> None:
        return_big_buffers()  # bodies and uploads are freed back to the system, not kept (issue 25)
        self._settings = settings
        self._gateway = ModelGateway({"sdxl": sdxl, "musicgen": musicgen}, settings)
        application = serve.get_replica_context().app_name
        jobs = settings.jobs.for_application(application)
        capacity = ModelCapacity(self._gateway, application, jobs.capacity_refresh_s)
        self._jobs = Jobs(
            self._gateway, jobs, settings.public_url, settings.output_url_secret(), limits=capacity.limits
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self._gateway, self._jobs, self._settings)

    async def sdxl(self, request: SDXLRequest | dict[str, Any]) -> SDXLOutput:
        """Generates images (handle API; HTTP goes through the same path)."""
        return await self._gateway.generate("sdxl", await self._gateway.prepare("sdxl", request))

    async def musicgen(self, request: MusicGenRequest | dict[str, Any]) -> MusicGenOutput:
        """Generates a track (handle API; HTTP goes through the same path)."""
        return await self._gateway.generate("musicgen", await self._gateway.prepare("musicgen", request))

    async def musicgen_stream(
        self, request: MusicGenRequest | dict[str, Any]
    ) -> AsyncIterator[AudioProgress | AudioDelta | MusicGenOutput]:
        """A track as it is generated (handle API, with `options(stream=True)`): AudioProgress each
        second and AudioDelta pieces of its audio, then its MusicGenOutput, as HTTP's event stream."""
        prepared = await self._gateway.prepare("musicgen", request)
        async for event in self._gateway.events("musicgen", prepared.model_copy(update={"stream": True})):
            yield event

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Queued jobs per model deployment, for the application's autoscaling policy
        (leap_ray.serve.autoscaling), which counts them as that model's ongoing requests."""
        backlog = self._jobs.runner.backlog
        return {
            QUEUED_JOBS + deployment: float(backlog.get(service, 0))
            for service, deployment in self._gateway.deployment_names().items()
        }

    async def check_health(self) -> None:
        """Serve calls this every few seconds: it also starts the job runner after a restart, so that
        jobs a dead replica left behind are taken over without waiting for a request."""
        self._jobs.runner.ensure_started()
