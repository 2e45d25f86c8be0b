"""OpenAI's APIs as the official `openai` clients call them. Models (`GET /v1/models`,
`/v1/models/{model}`): the services' names. Images, over the SDXL path (`POST /v1/images/generations`,
and `/v1/images/edits` for img2img and inpainting): the clients, and the workflow-engine nodes built on
them, call it unchanged. A thin adapter: the request becomes an SDXL request (the gateway validates it
as /v1/sdxl's), `url` answers are job outputs, and streams map our latent previews to OpenAI's
`image_generation.partial_image` events."""

import base64
import time
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from leap_ray.api.common import EVENT_STREAM, ErrorResponse
from leap_ray.api.jobs import JobSubmission
from leap_ray.api.openai_images import NO_TOKENS, OpenAIImageEditRequest, OpenAIImageRequest, image_event
from leap_ray.api.openai_models import OpenAIModel, OpenAIModelList
from leap_ray.api.progress import Progress
from leap_ray.api.replicate_models import REPLICATE_MODELS
from leap_ray.api.sdxl import SDXLOutput
from leap_ray.errors import LeapRayError, ModelError, NotFound, name_field
from leap_ray.serve.bodies import read_body, read_form
from leap_ray.serve.errors import as_leap_error
from leap_ray.serve.gateway import SERVICES, ModelGateway
from leap_ray.serve.jobs.service import Jobs
from leap_ray.serve.middleware import client_of
from leap_ray.serve.replicate_model_routes import model_view
from leap_ray.serve.routes import ERROR_RESPONSES, form_body, json_body, sse

# SDXL's fields as OpenAI's clients name them, for the `param` of an error.
OPENAI_PARAMS = {"width": "size", "height": "size", "num_images_per_prompt": "n", "mask_image": "mask"}


def _as_openai(error: Exception) -> LeapRayError:
    """The error with SDXL's field names (and a job's `input.` prefix) put back into OpenAI's, in its
    `param` and its message."""
    error = as_leap_error(error)
    if error.param is not None:
        error.param = error.param.removeprefix("input.")
        name_field(error, OPENAI_PARAMS)
    return error


def _response(body: OpenAIImageRequest, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": data,
        "size": body.size_text(),
        "output_format": body.output_format,
        "quality": "auto",
        "background": "opaque",
    }


async def _by_job(
    jobs: Jobs, body: OpenAIImageRequest, sdxl_input: dict[str, Any], request: Request
) -> dict[str, Any]:
    """`response_format: url`: the images become a job's outputs, and their links (signed, expiring:
    `OutputLinks`) the answer."""
    client = client_of(request.scope) or ""
    base = jobs.base_url(request)
    submission = JobSubmission(service="sdxl", input=sdxl_input)
    job = await jobs.wait((await jobs.submit(submission, base, client=client)).id)
    if job.status != "succeeded":
        raise ModelError((job.error or {}).get("message", f"the job was {job.status}"))
    data = [
        {"url": url, "revised_prompt": None, "seed": job.seed + index}
        for index, url in enumerate(await jobs.links.urls(job, base))
    ]
    return _response(body, data)


async def _stream(gateway: ModelGateway, body: OpenAIImageRequest, prepared: Any) -> AsyncIterator[str]:
    """Partial images (our latent previews) and then one completed event per image."""
    index = 0
    try:
        async for event in gateway.events("sdxl", prepared):
            if isinstance(event, Progress):
                preview = getattr(event, "preview", None)
                if preview and index < body.partial_images:
                    partial = image_event("partial_image", body, preview, partial_image_index=index)
                    yield sse(partial["type"], partial)
                    index += 1
                continue
            for image, seed in zip(event.images, event.seeds, strict=True):
                completed = image_event("completed", body, base64.b64encode(image).decode(), usage=NO_TOKENS)
                yield sse(completed["type"], {**completed, "seed": seed})
    except Exception as error:
        yield sse("error", _as_openai(error).body())


def openai_model_routes(models: Iterable[str]) -> APIRouter:
    """OpenAI's Models API over the services' names: `client.models.list()` and `.retrieve(name)`.
    A model's id is one path segment, so `/v1/models/{id}` never takes Replicate's
    `/v1/models/{owner}/{name}...` paths."""
    router = APIRouter(tags=["OpenAI Models API"], responses=ERROR_RESPONSES)
    started = int(time.time())
    served = {name: OpenAIModel(id=name, created=started) for name in models}

    @router.get(
        "/v1/models", summary="The models served, OpenAI Models API style", operation_id="openai_list_models"
    )
    async def list_models() -> OpenAIModelList:
        """OpenAI's `models.list`: every model this service serves, by the name its requests take; and
        Replicate's (`results`)."""
        replicate_models = [model_view(model) for model in REPLICATE_MODELS.values()]
        return OpenAIModelList(data=list(served.values()), results=replicate_models)

    @router.get(
        "/v1/models/{model}",
        summary="A model, OpenAI Models API style",
        operation_id="openai_retrieve_model",
        responses={404: {"model": ErrorResponse, "description": "No model of that name is served"}},
    )
    async def retrieve_model(
        model: Annotated[str, Path(description="The model's name, as `GET /v1/models` lists it.")],
    ) -> OpenAIModel:
        """OpenAI's `models.retrieve`; 404 (param `model`) for a name this service does not serve."""
        if model not in served:
            raise NotFound(f"no model {model!r}; this service serves {', '.join(served)}", param="model")
        return served[model]

    return router


def openai_routes(gateway: ModelGateway, jobs: Jobs) -> APIRouter:
    """OpenAI's Models API over the services, and its Images API over SDXL."""
    router = APIRouter()
    router.include_router(openai_model_routes(SERVICES))
    router.include_router(openai_image_routes(gateway, jobs))
    return router


def openai_image_routes(gateway: ModelGateway, jobs: Jobs) -> APIRouter:
    router = APIRouter(tags=["OpenAI Images API"], responses=ERROR_RESPONSES)

    @router.post(
        "/v1/images/generations",
        openapi_extra=json_body(OpenAIImageRequest),
        summary="Generate images, OpenAI Images API style",
        operation_id="openai_create_image",
    )
    async def create_image(request: Request) -> Response:
        """OpenAI's `images.generate`: `{created, data: [{b64_json | url, revised_prompt, seed}]}`,
        where `seed` (ours) reproduces each image. With `stream: true`, Server-Sent Events:
        `image_generation.partial_image` (up to `partial_images` latent previews), then
        `image_generation.completed` per image. Our SDXL fields are accepted beside OpenAI's."""
        return await _answer(gateway, jobs, await read_body(request, OpenAIImageRequest), request)

    @router.post(
        "/v1/images/edits",
        openapi_extra=form_body(OpenAIImageEditRequest),
        summary="Edit an image (img2img, inpainting), OpenAI Images API style",
        operation_id="openai_edit_image",
    )
    async def edit_image(request: Request) -> Response:
        """OpenAI's `images.edit`, as multipart/form-data: `image` (and `mask` for inpainting: its
        transparent pixels are repainted) with `prompt`. Answers as `images.generate` does; the size
        is the image's. Our SDXL fields (strength, seed, num_inference_steps, ...) may be form fields."""
        try:
            body = await read_form(request, OpenAIImageEditRequest)
        except Exception as error:
            raise _as_openai(error) from None
        return await _answer(gateway, jobs, body, request)

    return router


async def _answer(gateway: ModelGateway, jobs: Jobs, body: OpenAIImageRequest, request: Request) -> Response:
    """An Images API request answered: b64_json, url (by a job) or a stream."""
    try:
        sdxl_input = await run_in_threadpool(body.sdxl_input)  # an edit's mask is decoded here
        if body.response_format == "url" and not body.stream:
            return JSONResponse(await _by_job(jobs, body, sdxl_input, request))
        prepared = await gateway.prepare("sdxl", sdxl_input)
        if body.stream:
            return StreamingResponse(_stream(gateway, body, prepared), media_type=EVENT_STREAM)
        output = await gateway.generate("sdxl", prepared)
    except Exception as error:
        raise _as_openai(error) from None
    return await run_in_threadpool(_b64_json_answer, body, output)


def _b64_json_answer(body: OpenAIImageRequest, output: SDXLOutput) -> JSONResponse:
    """The images as base64 in a rendered JSON answer (megabytes): in a thread, off the event loop."""
    data = [
        {"b64_json": base64.b64encode(image).decode(), "revised_prompt": None, "seed": seed}
        for image, seed in zip(output.images, output.seeds, strict=True)
    ]
    return JSONResponse(_response(body, data))
