"""The job routes: submit, poll, list, fetch outputs, cancel (thin, over `Jobs`)."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from leap_ray.api.jobs import JobSubmission
from leap_ray.api.responses import JobStatus, JobView
from leap_ray.errors import NotFound
from leap_ray.serve.bodies import read_body
from leap_ray.serve.jobs.service import Jobs, job_view
from leap_ray.serve.middleware import client_of
from leap_ray.serve.routes import ERROR_RESPONSES, json_body

JOB_ID = Path(description="The job's id, as POST /v1/jobs answered it.")


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
        """Validates the input at once (422 naming `input.<field>`), then queues the job; 503 with
        Retry-After when `max_queued_jobs` are already waiting."""
        body = await read_body(request, JobSubmission)
        client = client_of(request.scope) or ""
        base = jobs.base_url(request)
        return JSONResponse(job_view(await jobs.submit(body, base, client=client), base), status_code=202)

    @router.get("", response_model=list[JobView], summary="Recent jobs, newest first")
    async def list_jobs(
        request: Request,
        status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
        limit: int = Query(100, ge=1, le=1000, description="Most jobs listed (1-1000), newest first."),
    ) -> JSONResponse:
        return JSONResponse(
            [
                job_view(job, jobs.base_url(request))
                for job in await jobs.recent(status, limit, client_of(request.scope))
            ]
        )

    @router.get("/{job_id}", response_model=JobView, summary="A job's state")
    async def get_job(request: Request, job_id: str = JOB_ID) -> JSONResponse:
        return JSONResponse(
            job_view(await jobs.get(job_id, client_of(request.scope)), jobs.base_url(request))
        )

    @router.get("/{job_id}/outputs/{index}", summary="One output's bytes")
    async def get_job_output(
        request: Request, job_id: str = JOB_ID, index: int = Path(ge=0, description="Which output, from 0.")
    ) -> FileResponse:
        outputs = (await jobs.get(job_id, client_of(request.scope))).outputs
        if not 0 <= index < len(outputs):
            raise NotFound(f"job {job_id} has no output {index}", param="index")
        return FileResponse(outputs[index]["path"], media_type=outputs[index]["content_type"])

    @router.delete("/{job_id}", response_model=JobView, summary="Cancel a job")
    async def cancel_job(request: Request, job_id: str = JOB_ID) -> JSONResponse:
        """A queued job never runs; a running one stops at its next step and frees its batch slot."""
        return JSONResponse(
            job_view(await jobs.cancel(job_id, client_of(request.scope)), jobs.base_url(request))
        )

    return router
