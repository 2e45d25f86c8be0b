"""The AUTOMATIC1111 web UI API over the SDXL path (`/sdapi/v1/txt2img`, `/sdapi/v1/img2img`), and
the read-only endpoints its clients probe (options, models, samplers, schedulers, progress, ...), so
that `webuiapi` and the tools built on it work unchanged. A thin adapter: the request becomes an SDXL
request, which the gateway validates and runs as /v1/sdxl's."""

import asyncio
import base64
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from leap_ray.api.a1111 import (
    MODEL_TITLE,
    OPTIONS,
    SAMPLERS,
    SCHEDULE_TYPES,
    A1111Fields,
    A1111Img2ImgRequest,
    A1111Txt2ImgRequest,
    a1111_error,
    a1111_info,
    infotexts_of,
    job_timestamp,
    options_error,
)
from leap_ray.api.sdxl import SDXLOutput, SDXLRequest, seeds_for
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest, LeapRayError
from leap_ray.serve.bodies import load_json, read_body
from leap_ray.serve.errors import as_leap_error
from leap_ray.serve.gateway import ModelGateway
from leap_ray.serve.middleware import client_of
from leap_ray.serve.routes import ERROR_RESPONSES, json_body

OBJECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "description": "Options to set."}}},
    }
}
T = TypeVar("T")


def _as_a1111(error: Exception, body: A1111Fields) -> LeapRayError:
    """An error of the SDXL request, told in A1111's fields (`a1111_error`)."""
    return a1111_error(as_leap_error(error), body)


@dataclass
class ClientRuns:
    """One client's A1111 generations running here: their tasks, and the latest one's job and start."""

    tasks: set[asyncio.Future] = field(default_factory=set)
    job: str = ""
    since: float = 0.0


class Running:
    """The A1111 generations this ingress replica is running, by client (`client_of`: an API key's
    id; None, an admin key, sees and stops everyone's), for /sdapi/v1/progress and /interrupt."""

    def __init__(self) -> None:
        self.clients: dict[str | None, ClientRuns] = {}

    async def run(self, client: str | None, job: str, call: Awaitable[T]) -> T | None:
        """The call's result, or None when its client interrupted it (`interrupt`)."""
        runs = self.clients.setdefault(client, ClientRuns())
        task = asyncio.ensure_future(call)
        runs.tasks.add(task)
        runs.job, runs.since = job, time.time()
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                return None  # interrupted; not this request's own cancellation (its client gone)
            raise
        finally:
            runs.tasks.discard(task)
            if not runs.tasks and self.clients.get(client) is runs:
                del self.clients[client]

    def _of(self, client: str | None) -> list[ClientRuns]:
        return [runs for owner, runs in self.clients.items() if client is None or owner == client]

    def interrupt(self, client: str | None) -> int:
        """Cancels the client's generations (the gateway tells the model, which stops at its next
        step); how many."""
        tasks = [task for runs in self._of(client) for task in runs.tasks]
        for task in tasks:
            task.cancel()
        return len(tasks)

    def progress(self, client: str | None) -> dict[str, Any]:
        """A1111's progress answer for a client: idle, or how many of its generations run here (steps
        are not tracked)."""
        runs = self._of(client)
        count = sum(len(each.tasks) for each in runs)
        latest = max(runs, key=lambda each: each.since, default=None)
        state = {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": latest.job if latest else "",
            "job_count": count,
            "job_timestamp": job_timestamp(latest.since) if latest else "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        }
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}


async def _generate(
    gateway: ModelGateway, running: Running, body: A1111Fields, job: str, request: Request
) -> JSONResponse:
    """An A1111 generation: its SDXL request run, answered in A1111's shape. Interrupted, it answers
    as A1111 does with the images made so far: none here (a request's images come at its end)."""
    sdxl_input = await run_in_threadpool(body.sdxl_input)  # opens the uploads (A1111's own names)
    started = time.time()
    try:
        prepared = (await gateway.prepare("sdxl", sdxl_input)).as_written(body.prompt or "")
        output = await running.run(client_of(request.scope), job, gateway.generate("sdxl", prepared))
    except Exception as error:
        raise _as_a1111(error, body) from None
    return await run_in_threadpool(_answer, body, prepared, output, started)


def _answer(
    body: A1111Fields, request: SDXLRequest, output: SDXLOutput | None, started: float
) -> JSONResponse:
    """The answer, rendered (base64 of up to LIMITS' images, a JSON of megabytes): in a thread."""
    images = output.images if output is not None else []
    seeds = output.seeds if output is not None else seeds_for(request, request.seed)
    infotexts = infotexts_of(request, images, seeds[: len(images)])
    info = a1111_info(body, request, seeds, infotexts, started)
    sent = [base64.b64encode(image).decode() for image in images] if body.send_images is not False else []
    return JSONResponse({"images": sent, "parameters": body.parameters(), "info": info})


def a1111_routes(gateway: ModelGateway) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"], responses=ERROR_RESPONSES)
    running = Running()

    @router.post(
        "/txt2img", openapi_extra=json_body(A1111Txt2ImgRequest), summary="Text to image, AUTOMATIC1111 style"
    )
    async def a1111_txt2img(request: Request) -> JSONResponse:
        """A1111's txt2img: `{images: [base64 PNG], parameters, info}` where `info` is a JSON string
        with `seed`, `all_seeds` (image j: seed + j) and `infotexts`."""
        body = await read_body(request, A1111Txt2ImgRequest)
        return await _generate(gateway, running, body, "txt2img", request)

    @router.post(
        "/img2img",
        openapi_extra=json_body(A1111Img2ImgRequest),
        summary="Image to image, AUTOMATIC1111 style",
    )
    async def a1111_img2img(request: Request) -> JSONResponse:
        """A1111's img2img, and inpainting with `mask`; answers as txt2img does."""
        body = await read_body(request, A1111Img2ImgRequest)
        return await _generate(gateway, running, body, "img2img", request)

    @router.get("/options", summary="The settings generations run with, AUTOMATIC1111 style")
    async def a1111_get_options() -> dict[str, Any]:
        """The checkpoint (`sd_model_checkpoint`) and the few settings that apply here."""
        return OPTIONS

    @router.post("/options", openapi_extra=OBJECT_BODY, summary="Set settings, AUTOMATIC1111 style")
    async def a1111_set_options(request: Request) -> None:
        """Only what GET reports may be set (the checkpoint to ours): anything else is a 422."""
        options = await run_in_threadpool(load_json, await request.body(), LIMITS.max_json_items)
        if not isinstance(options, dict):
            raise InvalidRequest("the body must be a JSON object of options")
        if (error := options_error(options)) is not None:
            raise error

    @router.get("/sd-models", summary="The checkpoints, AUTOMATIC1111 style")
    async def a1111_sd_models() -> list[dict[str, Any]]:
        """One: this service's SDXL model."""
        return [
            {
                "title": MODEL_TITLE,
                "model_name": MODEL_TITLE,
                "hash": None,
                "sha256": None,
                "filename": MODEL_TITLE,
                "config": None,
            }
        ]

    @router.get("/samplers", summary="The samplers, AUTOMATIC1111 style")
    async def a1111_samplers() -> list[dict[str, Any]]:
        """The A1111 samplers that map onto ours; `sampler_name` may be a name or an alias."""
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]

    @router.get("/schedulers", summary="The schedule types, AUTOMATIC1111 style")
    async def a1111_schedulers() -> list[dict[str, Any]]:
        """Only Automatic: each sampler's own schedule."""
        name, label = SCHEDULE_TYPES
        return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}]

    @router.get("/upscalers", summary="The upscalers, AUTOMATIC1111 style")
    async def a1111_upscalers() -> list[dict[str, Any]]:
        """Only "None": no upscaler is offered."""
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}]

    @router.get("/loras", summary="The LoRA adapters, AUTOMATIC1111 style")
    async def a1111_loras() -> list[dict[str, Any]]:
        """The adapters a prompt may apply with `<lora:NAME:SCALE>` (the operator's `sdxl.loras`)."""
        spec = await gateway.spec("sdxl")
        return [{"name": name, "alias": name, "path": name, "metadata": {}} for name in spec.loras]

    @router.get("/scripts", summary="The scripts, AUTOMATIC1111 style")
    async def a1111_scripts() -> dict[str, list[str]]:
        """None are offered."""
        return {"txt2img": [], "img2img": []}

    @router.get("/progress", summary="Progress of generations, AUTOMATIC1111 style")
    async def a1111_progress(
        request: Request,
        skip_current_image: Annotated[
            bool, Query(description="A1111's; no current image is ever sent here.")
        ] = False,
    ) -> dict[str, Any]:
        """Idle (progress 0, job_count 0), or in `state.job_count` the number of the caller's A1111
        generations (its API key's; an admin key: everyone's) running on the ingress replica that
        answers (their steps are not tracked)."""
        return running.progress(client_of(request.scope))

    @router.post("/interrupt", summary="Stop generations, AUTOMATIC1111 style")
    async def a1111_interrupt(request: Request) -> dict[str, Any]:
        """Stops the caller's A1111 generations (its API key's; an admin key: everyone's) on the
        ingress replica that answers: the model drops them at its next step, and each answers 200 as
        A1111 does, with the images made so far: none (`images: []`, `info` with every seed, no
        infotexts). Answers `{}`, as A1111 does, whether or not anything was running."""
        running.interrupt(client_of(request.scope))
        return {}

    @router.post("/skip", summary="Skip the current batch, AUTOMATIC1111 style")
    async def a1111_skip(request: Request) -> dict[str, Any]:
        """As /interrupt: A1111 skips the batch in progress and goes on to the next of n_iter, but
        here a request's batch_size × n_iter images are made together, so nothing is left to go on to."""
        running.interrupt(client_of(request.scope))
        return {}

    return router
