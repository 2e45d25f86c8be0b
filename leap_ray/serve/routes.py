"""The HTTP routes of generation and health: thin, each hands its parsed request to the gateway."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from leap_ray.api.audio import AUDIO_FORMATS, content_type
from leap_ray.api.common import EVENT_STREAM, ErrorResponse
from leap_ray.api.images import CONTENT_TYPES
from leap_ray.api.musicgen import MusicGenRequest, musicgen_response
from leap_ray.api.progress import AudioDelta, Progress, audio_delta_json, progress_json
from leap_ray.api.responses import MusicGenResponse, SDXLResponse
from leap_ray.api.sdxl import SDXLRequest, sdxl_response
from leap_ray.api.sdxl_defaults import SDXLDefaults, sdxl_defaults
from leap_ray.errors import NotAcceptable
from leap_ray.serve.errors import as_leap_error
from leap_ray.serve.gateway import SERVICES, ModelGateway

READY_TIMEOUT_S = 10.0  # a controller that does not answer makes /readyz fail, not hang
IMAGE_FORMATS_BY_TYPE = {media_type: name for name, media_type in CONTENT_TYPES.items()}
AUDIO_FORMATS_BY_TYPE = {content_type(name): name for name in AUDIO_FORMATS}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "The body is not valid JSON (or not UTF-8, or nested too deeply)"),
        (401, "Missing or wrong API key"),
        (406, "Accept names no type offered, or raw bytes for a request that makes more than one output"),
        (408, "The request body arrived too slowly"),
        (413, "Request body too large, or holding too many JSON items"),
        (415, "The body is not application/json in UTF-8"),
        (422, "Invalid request: the error's param names the field"),
        (429, "Too many requests, or request bodies at once, from this client; retry after Retry-After"),
        (503, "At capacity, model unavailable or failed; retry after Retry-After seconds"),
    ]
}


def _own_body(model: type, media_type: str) -> dict[str, Any]:
    """OpenAPI's requestBody for a route that parses its own body (off the event loop)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def json_body(model: type) -> dict[str, Any]:
    return _own_body(model, "application/json")


def form_body(model: type) -> dict[str, Any]:
    return _own_body(model, "multipart/form-data")


EVENTS = "events"
JSON_TYPES = frozenset({"application/json", "application/*", "*/*"})


def _accepted(accept: str) -> list[str]:
    """The Accept header's media types, most wanted first (q-values, then order); q=0 ones left out."""
    choices = []
    for position, part in enumerate(accept.split(",")):
        media_type, *parameters = (piece.strip().lower() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media_type and quality > 0:
            choices.append((-quality, position, media_type))
    return [media_type for _, _, media_type in sorted(choices)]


def negotiate(accept: str | None, formats_by_type: dict[str, str]) -> str | None:
    """What the client wants most of what we offer: a raw format of `formats_by_type` (`image/*`
    or `audio/*` gives the first), EVENTS, or None for JSON (also without an Accept header, or with
    one that only excludes types). An Accept header wanting only types we do not offer gets 406."""
    accepted = _accepted(accept or "")
    for media_type in accepted:
        if media_type == EVENT_STREAM:
            return EVENTS
        if media_type in formats_by_type:
            return formats_by_type[media_type]
        if media_type in JSON_TYPES:
            return None
        family = media_type.removesuffix("/*")
        matching = [name for offered, name in formats_by_type.items() if offered.startswith(f"{family}/")]
        if media_type.endswith("/*") and matching:
            return matching[0]
    if accepted:  # types were named (not only excluded with q=0), and none is offered
        offered = ", ".join(["application/json", *formats_by_type, EVENT_STREAM])
        raise NotAcceptable(f"cannot answer with any type in Accept; offered: {offered}", param="accept")
    return None


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def sse_of(event: Progress) -> str:
    """A model's event as SSE: `audio.delta` for a piece of a track's audio, else `progress`."""
    if isinstance(event, AudioDelta):
        return sse("audio.delta", audio_delta_json(event))
    return sse("progress", progress_json(event))


async def event_stream(gateway: ModelGateway, service: str, request: Any) -> StreamingResponse:
    """Server-Sent Events: `progress` after each denoising step (SDXL: step, total, timestep) or
    generated second (MusicGen: seconds, total), MusicGen's `audio.delta` pieces as they are generated
    (when the request has `stream: true`), then `result` with the JSON response, or `error`. Bad input
    is still a plain 422, before the stream starts."""
    request = await gateway.prepare(service, request)
    response = SERVICES[service].response

    async def events() -> AsyncIterator[str]:
        try:
            async for event in gateway.events(service, request):
                if isinstance(event, Progress):
                    yield sse_of(event)
                else:
                    yield sse("result", response(event).model_dump())
        except Exception as error:
            yield sse("error", as_leap_error(error).body())

    return StreamingResponse(events(), media_type=EVENT_STREAM)


def _responses(media_types: list[str], description: str) -> dict[int | str, dict[str, Any]]:
    return {**ERROR_RESPONSES, 200: {"content": {t: {} for t in media_types}, "description": description}}


ACCEPT = Header(
    description="application/json (default), text/event-stream, or a raw media type of the output; "
    "q-values and wildcards are understood; a type not offered gets 406."
)


def generation_routes(gateway: ModelGateway) -> APIRouter:
    router = APIRouter(tags=["Generation"])

    @router.post(
        "/v1/sdxl",
        response_model=SDXLResponse,
        responses=_responses([*CONTENT_TYPES.values(), EVENT_STREAM], "JSON, raw image bytes, or events"),
        openapi_extra=json_body(SDXLRequest),
        summary="Generate images with Stable Diffusion XL",
    )
    async def post_sdxl(request: Request, accept: Annotated[str | None, ACCEPT] = None) -> Response:
        """JSON by default; with `Accept: image/png` (or jpeg, webp) and one image, the raw bytes with
        the seed in the `X-Seed` header; with `Accept: text/event-stream`, a progress event per step
        and then the JSON result as Server-Sent Events."""
        body = await gateway.read(request, "sdxl")
        image_format = negotiate(accept, IMAGE_FORMATS_BY_TYPE)
        if body.stream or image_format == EVENTS:
            return await event_stream(gateway, "sdxl", body)
        if image_format is not None:
            if body.image_count != 1:
                message = "raw image bytes need a request for exactly one image"
                raise NotAcceptable(message, param="num_images_per_prompt")
            body = body.model_copy(update={"output_format": image_format})
        output = await gateway.generate("sdxl", await gateway.prepare("sdxl", body))
        if image_format is not None:
            headers = {"X-Seed": str(output.seeds[0])}
            return Response(output.images[0], media_type=CONTENT_TYPES[image_format], headers=headers)
        return JSONResponse(sdxl_response(output).model_dump())

    @router.post(
        "/v1/musicgen",
        response_model=MusicGenResponse,
        responses=_responses([*AUDIO_FORMATS_BY_TYPE, EVENT_STREAM], "JSON, raw audio bytes, or events"),
        openapi_extra=json_body(MusicGenRequest),
        summary="Generate music with MusicGen",
    )
    async def post_musicgen(request: Request, accept: Annotated[str | None, ACCEPT] = None) -> Response:
        """JSON by default; with `Accept: audio/wav` (or flac, ogg, mpeg) the raw bytes, with the
        seed in `X-Seed` and the sample rate in `X-Sample-Rate`; with `stream: true` or `Accept:
        text/event-stream`, Server-Sent Events: `audio.delta` events carrying the track as it is
        generated (about every half second: base64 16-bit little-endian mono PCM, `format` pcm16,
        `sample_rate`, `start` in seconds; joined in order they are the whole track), a `progress`
        event per generated second, then `result` with the JSON answer (the complete track)."""
        body = await gateway.read(request, "musicgen")
        audio_format = negotiate(accept, AUDIO_FORMATS_BY_TYPE)
        if body.stream or audio_format == EVENTS:
            # The model sends audio pieces only for a request that says stream (Accept may be all).
            return await event_stream(gateway, "musicgen", body.model_copy(update={"stream": True}))
        if audio_format is not None:
            body = body.model_copy(update={"format": audio_format})
        output = await gateway.generate("musicgen", await gateway.prepare("musicgen", body))
        if audio_format is not None:
            headers = {"X-Seed": str(output.seed), "X-Sample-Rate": str(output.sample_rate)}
            return Response(output.audio, media_type=content_type(audio_format), headers=headers)
        return JSONResponse(musicgen_response(output).model_dump())

    @router.get("/v1/sdxl/adapters", summary="The LoRA adapters SDXL requests may name")
    async def get_sdxl_adapters() -> dict[str, list[str]]:
        """The names `loras` may use; the operator lists them in the config (`sdxl.loras`)."""
        spec = await gateway.spec("sdxl")
        return {"loras": list(spec.loras)}

    @router.get(
        "/v1/sdxl/defaults",
        response_model=SDXLDefaults,
        responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]},
        summary="Sizes and steps that suit the SDXL model being served",
    )
    async def get_sdxl_defaults() -> SDXLDefaults:
        """What a client may fill in before a request (the playground does): the model's native size
        (its UNet's sample size × its VAE's scale factor: 1024 for SDXL, 256 for the tiny model) and
        the steps suggested for it. The request's own defaults stay as documented."""
        return sdxl_defaults(await gateway.spec("sdxl"))

    return router


def health_routes(gateway: ModelGateway) -> APIRouter:
    router = APIRouter(tags=["Health"])

    @router.get("/healthz", summary="Liveness of the ingress")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Ready when every model deployment has a running replica",
        responses={503: {"description": "Not ready: a model deployment has no running replica"}},
    )
    async def readyz() -> JSONResponse:
        status = await asyncio.wait_for(asyncio.to_thread(serve.status), READY_TIMEOUT_S)
        application = status.applications[serve.get_replica_context().app_name]
        report = {}
        services = gateway.deployment_names()
        # Deployments that serve no route of their own (the refiner) count too.
        behind = serve.get_replica_context().deployment
        others = {
            name.lower(): name
            for name in application.deployments
            if name not in services.values() and name != behind
        }
        for service, name in {**services, **others}.items():
            deployment = application.deployments.get(name)
            report[service] = (
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

    return router
