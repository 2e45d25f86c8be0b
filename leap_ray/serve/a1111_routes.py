"""The AUTOMATIC1111 web UI API over the SDXL path (`/sdapi/v1/txt2img`, `/sdapi/v1/img2img`), and
the read-only endpoints its clients probe (options, models, samplers, schedulers, progress, ...), so
that `webuiapi` and the tools built on it work unchanged. A thin adapter: the request becomes an SDXL
request, which the gateway validates and runs as /v1/sdxl's."""

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from leap_ray.api.a1111 import (
    A1111_PARAMS,
    MODEL_TITLE,
    OPTIONS,
    SAMPLERS,
    SCHEDULE_TYPES,
    A1111Fields,
    A1111Img2ImgRequest,
    A1111Txt2ImgRequest,
    a1111_info,
    options_error,
)
from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest, LeapRayError
from leap_ray.serve.bodies import load_json, read_body
from leap_ray.serve.errors import as_leap_error
from leap_ray.serve.gateway import ModelGateway
from leap_ray.serve.routes import ERROR_RESPONSES, json_body

OBJECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "description": "Options to set."}}},
    }
}


def _as_a1111(error: Exception) -> LeapRayError:
    """An error of the SDXL request, its field put back into A1111's name."""
    error = as_leap_error(error)
    if error.param is not None:
        error.param = A1111_PARAMS.get(error.param, error.param)
    return error


class Running:
    """The A1111 generations this ingress replica is running, for /sdapi/v1/progress."""

    def __init__(self) -> None:
        self.count = 0
        self.job = ""
        self.since = 0.0

    @contextmanager
    def one(self, job: str) -> Iterator[None]:
        self.count += 1
        self.job, self.since = job, time.time()
        try:
            yield
        finally:
            self.count -= 1

    def progress(self) -> dict[str, Any]:
        """A1111's progress answer: idle, or how many generations run here (steps are not tracked)."""
        busy = self.count > 0
        state = {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": self.job if busy else "",
            "job_count": self.count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(self.since)) if busy else "0",
            "job_no": 0,
            "sampling_step": 0,
            "sampling_steps": 0,
        }
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}


async def _generate(gateway: ModelGateway, running: Running, body: A1111Fields, job: str) -> JSONResponse:
    """An A1111 generation: its SDXL request run, answered in A1111's shape."""
    sdxl_input = await run_in_threadpool(body.sdxl_input)  # opens the uploads (A1111's own names)
    try:
        prepared = await gateway.prepare("sdxl", sdxl_input)
        with running.one(job):
            output = await gateway.generate("sdxl", prepared)
    except Exception as error:
        raise _as_a1111(error) from None
    images = (
        [base64.b64encode(image).decode() for image in output.images] if body.send_images is not False else []
    )
    info = a1111_info(body, prepared, output.seeds)
    return JSONResponse({"images": images, "parameters": body.parameters(), "info": info})


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
        return await _generate(gateway, running, body, "txt2img")

    @router.post(
        "/img2img",
        openapi_extra=json_body(A1111Img2ImgRequest),
        summary="Image to image, AUTOMATIC1111 style",
    )
    async def a1111_img2img(request: Request) -> JSONResponse:
        """A1111's img2img, and inpainting with `mask`; answers as txt2img does."""
        body = await read_body(request, A1111Img2ImgRequest)
        return await _generate(gateway, running, body, "img2img")

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
        skip_current_image: Annotated[
            bool, Query(description="A1111's; no current image is ever sent here.")
        ] = False,
    ) -> dict[str, Any]:
        """Idle (progress 0, job_count 0), or the number of A1111 generations running on the ingress
        replica that answers in `state.job_count` (their steps are not tracked)."""
        return running.progress()

    return router
