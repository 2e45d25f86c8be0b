"""The job routes: submit, poll, list, fetch outputs, cancel (thin, over `Jobs`)."""

import asyncio
import os
import stat
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from leap_ray.api.common import ErrorResponse
from leap_ray.api.jobs import JobSubmission
from leap_ray.api.responses import JobStatus, JobView
from leap_ray.errors import NotFound
from leap_ray.serve.bodies import read_body
from leap_ray.serve.jobs.outputs import StoredOutput, gone
from leap_ray.serve.jobs.service import Jobs
from leap_ray.serve.middleware import client_of
from leap_ray.serve.routes import ERROR_RESPONSES, json_body

JOB_ID = Path(description="The job's id, as POST /v1/jobs answered it.")
OUTPUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {}, "audio/*": {}}, "description": "The output's bytes"},
    206: {"description": "Part of an output kept in a folder (a Range request)"},
    307: {"description": "With output_urls: presigned, to the object store's presigned link"},
    403: {
        "model": ErrorResponse,
        "description": "A signed link expired, or its path, expiry or signature altered, and no valid "
        "API key sent",
    },
}


def job_routes(jobs: Jobs) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", responses=ERROR_RESPONSES, tags=["Jobs"])

    @router.post(
        "",
        status_code=202,
        response_model=JobView,
        openapi_extra=json_body(JobSubmission),
        summary="Submit a job",
    )
    async def submit_job(request: Request) -> JSONResponse:
        """Validates the input at once (422 naming `input.<field>`), then queues the job; 429
        `quota_exceeded` when this key's `max_queued_jobs_per_key` are already waiting, 503 when
        `max_queued_jobs` are (both with Retry-After). Jobs start in turns between keys."""
        body = await read_body(request, JobSubmission)
        client = client_of(request.scope) or ""
        base = jobs.base_url(request)
        return JSONResponse(
            await jobs.view(await jobs.submit(body, base, client=client), base), status_code=202
        )

    @router.get("", response_model=list[JobView], summary="Recent jobs, newest first")
    async def list_jobs(
        request: Request,
        status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
        limit: int = Query(100, ge=1, le=1000, description="Most jobs listed (1-1000), newest first."),
    ) -> JSONResponse:
        base = jobs.base_url(request)
        return JSONResponse(
            [await jobs.view(job, base) for job in await jobs.recent(status, limit, client_of(request.scope))]
        )

    @router.get("/{job_id}", response_model=JobView, summary="A job's state")
    async def get_job(request: Request, job_id: str = JOB_ID) -> JSONResponse:
        return JSONResponse(
            await jobs.view(await jobs.get(job_id, client_of(request.scope)), jobs.base_url(request))
        )

    # HEAD too (players and downloaders ask for the size first), as its own route: one route with
    # both methods would give the schema one operation id twice.
    @router.get("/{job_id}/outputs/{index}", responses=OUTPUT_RESPONSES, summary="One output's bytes")
    @router.head("/{job_id}/outputs/{index}", include_in_schema=False)
    async def get_job_output(
        request: Request,
        job_id: str = JOB_ID,
        index: int = Path(ge=0, description="Which output, from 0."),
        # For the schema: the auth middleware checks a link (`LinkSigner.verify`) before the route runs.
        expires: int | None = Query(None, description="A signed link's expiry, in Unix seconds."),
        signature: str | None = Query(None, description="A signed link's signature (HMAC-SHA256, hex)."),
    ) -> Response:
        """Fetched by the link a job's `outputs` give, which needs no API key until it expires (403
        after, or when altered, unless the request carries a valid key); without a link's parameters,
        with the key that made the job. An output kept in a folder answers Range requests (206, which
        browsers' `<audio>` players need), HEAD, ETag and Last-Modified; one kept in an object store
        comes whole (200: Range is not supported there; HEAD reads it too) unless `output_urls:
        presigned` redirects to the store's link, which takes Range."""
        job = await jobs.get(job_id, client_of(request.scope))
        if not 0 <= index < len(job.outputs):
            raise NotFound(f"job {job_id} has no output {index}", param="index")
        if (presigned := await jobs.links.presigned_url(job, index)) is not None:
            return RedirectResponse(presigned, status_code=307)
        stored = job.outputs[index]
        if (file := jobs.outputs.local_file(stored)) is not None:
            return await file_response(file, stored)
        return Response(await jobs.read_output(stored), media_type=stored["content_type"])

    @router.delete("/{job_id}", response_model=JobView, summary="Cancel a job")
    async def cancel_job(request: Request, job_id: str = JOB_ID) -> JSONResponse:
        """A queued job never runs; a running one stops at its next step and frees its batch slot."""
        return JSONResponse(
            await jobs.view(await jobs.cancel(job_id, client_of(request.scope)), jobs.base_url(request))
        )

    return router


async def file_response(file: FilePath, stored: StoredOutput) -> FileResponse:
    """An output kept as a file, answered as Starlette's FileResponse (Range, HEAD, ETag), which
    reads it off the event loop; the file is looked at here, off the loop too, so that one gone
    (expired) is a 404 in the error shape rather than FileResponse's RuntimeError."""
    try:
        if not file.is_absolute():
            raise FileNotFoundError(file)
        found = await asyncio.to_thread(os.stat, file)
    except FileNotFoundError:
        raise gone() from None
    if not stat.S_ISREG(found.st_mode):
        raise gone()
    return FileResponse(file, media_type=stored["content_type"], stat_result=found)
