"""The ingress: a FastAPI app that validates every request, checks it against the loaded model's
shapes, and forwards it to the model deployments. It holds no model.

Python users reach the same paths through a handle: `serve.get_app_handle("leap_ray").sdxl.remote(r)`
and `.musicgen.remote(r)`, with a request model or a dict (tensors and callables allowed)."""

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from leap_ray.api.audio import AUDIO_FORMATS, content_type
from leap_ray.api.common import EVENT_STREAM, MAX_SEED, ErrorResponse
from leap_ray.api.images import CONTENT_TYPES
from leap_ray.api.jobs import JobStatus, JobSubmission, JobView
from leap_ray.api.musicgen import MusicGenOutput, MusicGenRequest, MusicGenResponse
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest, SDXLResponse
from leap_ray.config import LIMITS, IngressSettings
from leap_ray.errors import LeapRayError, NotAcceptable, NotFound, invalid_request_from
from leap_ray.jobs import open_store
from leap_ray.jobs.store import Job
from leap_ray.serve import webhooks
from leap_ray.serve.errors import REPLICA_FAILURES, as_leap_error, install_error_handlers
from leap_ray.serve.jobs import JobRunner
from leap_ray.serve.middleware import ApiKeyAuth, RequestGuard

logger = logging.getLogger("ray.serve")

MODEL_DEPLOYMENTS = {"sdxl": "SDXL", "musicgen": "MusicGen"}
IMAGE_FORMATS_BY_TYPE = {media_type: name for name, media_type in CONTENT_TYPES.items()}
AUDIO_FORMATS_BY_TYPE = {content_type(name): name for name in AUDIO_FORMATS}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "The body is not valid JSON"),
        (401, "Missing or wrong API key"),
        (406, "Raw bytes asked for (Accept) but the request makes more than one output"),
        (413, "Request body too large"),
        (415, "The body is not application/json"),
        (422, "Invalid request: the error's param names the field"),
        (503, "At capacity or model unavailable; retry after Retry-After seconds"),
    ]
}

app = FastAPI(
    title="leap_ray",
    version="0.1.0",
    description="Stable Diffusion XL images and MusicGen music on Ray Serve. Errors have the shape "
    '`{"error": {"message", "type", "param", "code"}}`.',
)
install_error_handlers(app)


def raw_format(accept: str | None, formats_by_type: dict[str, str]) -> str | None:
    """The output format when the client's first Accept choice is one of `formats_by_type`."""
    if not accept:
        return None
    first = accept.split(",")[0].split(";")[0].strip().lower()
    return formats_by_type.get(first)


def wants_events(body: Any, accept: str | None) -> bool:
    return body.stream or raw_format(accept, {EVENT_STREAM: "events"}) is not None


def _prefix(request: Request) -> str:
    """The application's route prefix, for the URLs in responses."""
    return request.scope.get("root_path", "")


def _validated(request_type: type, request: Any) -> Any:
    if isinstance(request, request_type):
        return request
    try:
        return request_type.model_validate(request)
    except ValidationError as error:
        raise invalid_request_from(error.errors()) from None


@serve.deployment(name="Ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, sdxl: DeploymentHandle, musicgen: DeploymentHandle, settings: IngressSettings) -> None:
        self._handles = {"sdxl": sdxl, "musicgen": musicgen}
        self._settings = settings
        self._specs: dict[str, asyncio.Future] = {}
        jobs = settings.jobs
        self._webhook_secret = jobs.webhook_secret()
        self._deliveries: set[asyncio.Task] = set()
        self._jobs = open_store(jobs)
        self._runner = JobRunner(
            self._jobs,
            Path(jobs.output_dir).expanduser(),
            self._run_job,
            self._notify,
            max_concurrent=jobs.max_concurrent_jobs,
            stale_after_s=jobs.stale_after_s,
            retention_s=jobs.retention_s,
        )
        # The last added runs first: keys are checked before any body is read.
        app.add_middleware(RequestGuard, max_body_bytes=LIMITS.max_body_bytes)
        app.add_middleware(ApiKeyAuth, keys=settings.load_api_keys())

    async def _spec(self, model: str) -> Any:
        """The model's shape facts, fetched once from a replica (which may still be loading). One
        shared fetch: concurrent first requests must not each queue a call at the model."""
        if model not in self._specs:
            call = self._handles[model].spec.remote()
            self._specs[model] = asyncio.ensure_future(asyncio.wait_for(call, self._settings.spec_timeout_s))
        try:
            return await asyncio.shield(self._specs[model])  # one caller leaving must not cancel it
        except Exception:
            self._specs.pop(model, None)  # the next request asks again
            raise

    async def sdxl(self, request: SDXLRequest | dict[str, Any]) -> SDXLOutput:
        """Generates images (handle API; HTTP goes through the same path)."""
        return await self._forward("sdxl", _validated(SDXLRequest, request))

    async def musicgen(self, request: MusicGenRequest | dict[str, Any]) -> MusicGenOutput:
        """Generates a track (handle API; HTTP goes through the same path)."""
        return await self._forward("musicgen", _validated(MusicGenRequest, request))

    async def _forward(self, model: str, request: Any) -> Any:
        """Checks the request against the model and runs it, retrying once on another or restarted
        replica if its replica dies. Every failure leaves as a typed error: Serve's own handlers
        would answer some in plain text."""
        try:
            return await self._generate(model, await self._prepare(model, request))
        except Exception as error:
            raise as_leap_error(error) from None

    async def _prepare(self, model: str, request: Any) -> Any:
        request.check_against(await self._spec(model))
        if request.seed is None:  # fixed here, so that a retry gives the same result
            request = request.model_copy(update={"seed": secrets.randbelow(MAX_SEED - 64)})
        return request

    async def _stream(self, model: str, request: Any, response_type: type) -> StreamingResponse:
        """Server-Sent Events: `progress` after each denoising step (SDXL: step, total, timestep) or
        generated second (MusicGen: seconds, total), then `result` with the JSON response, or `error`.
        Bad input is still a plain 422, before the stream starts."""
        try:
            request = await self._prepare(model, request)
        except Exception as error:
            raise as_leap_error(error) from None

        async def events() -> AsyncIterator[str]:
            try:
                async for event in self._events(model, request):
                    name = event.pop("event")
                    data = (
                        response_type.from_output(event["output"]).model_dump() if name == "result" else event
                    )
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
            except Exception as error:
                yield f"event: error\ndata: {json.dumps(as_leap_error(error).body())}\n\n"

        return StreamingResponse(events(), media_type=EVENT_STREAM)

    async def _events(self, model: str, request: Any) -> AsyncIterator[dict[str, Any]]:
        """The model's progress events, then {"event": "result", "output"}. A replica that dies is
        retried once, as in `_generate` (progress then starts again)."""
        retries_left = self._settings.replica_failure_retries
        while True:
            stream = self._handles[model].options(stream=True).generate_stream.remote(request)
            try:
                async for event in stream:
                    yield event
                return
            except (asyncio.CancelledError, GeneratorExit):
                stream.cancel()  # as in `_generate`: a job's task is no Serve request
                raise
            except REPLICA_FAILURES as error:
                if retries_left == 0:
                    raise
                retries_left -= 1
                logger.warning("a %s replica died mid-stream; retrying it (%s)", model, type(error).__name__)

    async def _generate(self, model: str, request: Any) -> Any:
        retries_left = self._settings.replica_failure_retries
        while True:
            response = self._handles[model].generate.remote(request)
            try:
                return await response
            except asyncio.CancelledError:
                # Serve cancels the model call of a cancelled HTTP request itself, but not that of a
                # job's task (no Serve request): say it to the model here.
                response.cancel()
                raise
            except REPLICA_FAILURES as error:
                if retries_left == 0:
                    raise
                retries_left -= 1
                logger.warning("a %s replica died mid-request; retrying it (%s)", model, type(error).__name__)

    @app.post(
        "/v1/sdxl",
        response_model=SDXLResponse,
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {t: {} for t in [*CONTENT_TYPES.values(), EVENT_STREAM]},
                "description": "JSON, raw image bytes, or progress events",
            },
        },
        summary="Generate images with Stable Diffusion XL",
    )
    async def post_sdxl(self, body: SDXLRequest, accept: Annotated[str | None, Header()] = None) -> Response:
        """JSON by default; with `Accept: image/png` (or jpeg, webp) and one image, the raw bytes with
        the seed in the `X-Seed` header; with `Accept: text/event-stream`, a progress event per step
        and then the JSON result as Server-Sent Events."""
        if wants_events(body, accept):
            return await self._stream("sdxl", body, SDXLResponse)
        image_format = raw_format(accept, IMAGE_FORMATS_BY_TYPE)
        if image_format is not None:
            if body.image_count != 1:
                message = "raw image bytes need a request for exactly one image"
                raise NotAcceptable(message, param="num_images_per_prompt")
            body = body.model_copy(update={"output_format": image_format})
        output = await self.sdxl(body)
        if image_format is not None:
            headers = {"X-Seed": str(output.seeds[0])}
            return Response(output.images[0], media_type=CONTENT_TYPES[image_format], headers=headers)
        return JSONResponse(SDXLResponse.from_output(output).model_dump())

    @app.post(
        "/v1/musicgen",
        response_model=MusicGenResponse,
        responses={
            **ERROR_RESPONSES,
            200: {
                "content": {t: {} for t in [*AUDIO_FORMATS_BY_TYPE, EVENT_STREAM]},
                "description": "JSON, raw audio bytes, or progress events",
            },
        },
        summary="Generate music with MusicGen",
    )
    async def post_musicgen(
        self, body: MusicGenRequest, accept: Annotated[str | None, Header()] = None
    ) -> Response:
        """JSON by default; with `Accept: audio/wav` (or flac, ogg, mpeg) the raw bytes, with the
        seed in `X-Seed` and the sample rate in `X-Sample-Rate`; with `Accept: text/event-stream`, a
        progress event per generated second and then the JSON result as Server-Sent Events."""
        if wants_events(body, accept):
            return await self._stream("musicgen", body, MusicGenResponse)
        audio_format = raw_format(accept, AUDIO_FORMATS_BY_TYPE)
        if audio_format is not None:
            body = body.model_copy(update={"format": audio_format})
        output = await self.musicgen(body)
        if audio_format is not None:
            headers = {"X-Seed": str(output.seed), "X-Sample-Rate": str(output.sample_rate)}
            return Response(output.audio, media_type=content_type(audio_format), headers=headers)
        return JSONResponse(MusicGenResponse.from_output(output).model_dump())

    async def check_health(self) -> None:
        """Serve calls this every few seconds: it also starts the job runner after a restart, so that
        jobs a dead replica left behind are taken over without waiting for a request."""
        self._runner.ensure_started()

    async def _run_job(
        self, service: str, job_input: dict[str, Any], report: Callable[[dict], None]
    ) -> list[tuple[bytes, str, str]]:
        request_type = SDXLRequest if service == "sdxl" else MusicGenRequest
        request = await self._prepare(service, _validated(request_type, job_input))
        async for event in self._events(service, request):
            if event.pop("event") == "progress":
                report(event)
            else:
                output = event["output"]
        if service == "sdxl":
            return [(data, output.format, CONTENT_TYPES[output.format]) for data in output.images]
        return [(output.audio, output.format, content_type(output.format))]

    def _notify(self, job: Job, event: str) -> None:
        """Sends the job's webhook for this event, if it asked for one, as a task of its own."""
        if not job.webhook or event not in job.webhook["events"]:
            return
        jobs = self._settings.jobs
        payload = self._view(job, job.webhook["prefix"])
        delivery = webhooks.deliver(
            job.webhook["url"],
            event,
            payload,
            secret=self._webhook_secret,
            attempts=jobs.webhook_attempts,
            backoff_s=jobs.webhook_backoff_s,
        )
        task = asyncio.get_running_loop().create_task(delivery)
        self._deliveries.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._deliveries.discard)

    def _view(self, job: Job, prefix: str) -> dict[str, Any]:
        url = f"{prefix}/v1/jobs/{job.id}"
        return JobView(
            url=url,
            outputs=[f"{url}/outputs/{index}" for index in range(len(job.outputs))],
            **{name: getattr(job, name) for name in JobView.model_fields if name not in ("url", "outputs")},
        ).model_dump()

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", param="job_id")
        return job

    @app.post(
        "/v1/jobs", status_code=202, response_model=JobView, responses=ERROR_RESPONSES, summary="Submit a job"
    )
    async def submit_job(self, body: JobSubmission, request: Request) -> JSONResponse:
        """Validates the input as the synchronous endpoint would (422 at once when invalid), fixes a seed
        so that a job taken over after a restart gives the same outputs, and queues it."""
        self._runner.ensure_started()
        request_type = SDXLRequest if body.service == "sdxl" else MusicGenRequest
        try:
            validated = _validated(request_type, body.input)
        except LeapRayError as error:
            error.param = f"input.{error.param}" if error.param else "input"
            raise
        job_input = dict(body.input)
        if validated.seed is None:
            job_input["seed"] = secrets.randbelow(MAX_SEED - 64)
        webhook = None
        if body.webhook_url is not None:
            allow = self._settings.jobs.webhook_allow_private_networks
            await asyncio.to_thread(webhooks.check_webhook_url, body.webhook_url, allow_private=allow)
            prefix = _prefix(request)
            webhook = {"url": body.webhook_url, "events": body.webhook_events_filter, "prefix": prefix}
        job = self._jobs.create(body.service, job_input, webhook)
        return JSONResponse(self._view(job, _prefix(request)), status_code=202)

    @app.get("/v1/jobs", response_model=list[JobView], summary="Recent jobs, newest first")
    async def list_jobs(
        self, request: Request, status: JobStatus | None = None, limit: int = 100
    ) -> JSONResponse:
        jobs = self._jobs.recent(status, min(max(limit, 1), 1000))
        return JSONResponse([self._view(job, _prefix(request)) for job in jobs])

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=ERROR_RESPONSES, summary="A job's state")
    async def get_job(self, job_id: str, request: Request) -> JSONResponse:
        return JSONResponse(self._view(self._job(job_id), _prefix(request)))

    @app.get("/v1/jobs/{job_id}/outputs/{index}", responses=ERROR_RESPONSES, summary="One output's bytes")
    async def get_job_output(self, job_id: str, index: int) -> FileResponse:
        outputs = self._job(job_id).outputs
        if not 0 <= index < len(outputs):
            raise NotFound(f"job {job_id} has no output {index}", param="index")
        return FileResponse(outputs[index]["path"], media_type=outputs[index]["content_type"])

    @app.delete(
        "/v1/jobs/{job_id}", response_model=JobView, responses=ERROR_RESPONSES, summary="Cancel a job"
    )
    async def cancel_job(self, job_id: str, request: Request) -> JSONResponse:
        """A queued job never runs; a running one stops at its next step and frees its batch slot."""
        self._job(job_id)
        return JSONResponse(self._view(self._jobs.cancel(job_id), _prefix(request)))

    @app.get("/healthz", summary="Liveness of the ingress")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Ready when every model deployment has a running replica",
        responses={503: {"description": "Not ready: a model deployment has no running replica"}},
    )
    async def readyz(self) -> JSONResponse:
        status = await asyncio.to_thread(serve.status)
        application = status.applications[serve.get_replica_context().app_name]
        report = {}
        for model, name in MODEL_DEPLOYMENTS.items():
            deployment = application.deployments.get(name)
            report[model] = (
                {
                    "status": deployment.status.value,
                    "running_replicas": deployment.replica_states.get("RUNNING", 0),
                    "message": deployment.message,
                }
                if deployment
                else {"status": "MISSING", "running_replicas": 0, "message": ""}
            )
        ready = all(entry["running_replicas"] > 0 for entry in report.values())
        return JSONResponse({"ready": ready, "models": report}, status_code=200 if ready else 503)
