"""Replicate's prediction API (what its official clients call) and cog's (`POST /predictions`), over
the jobs: a prediction is a job, validated at once as /v1/sdxl or /v1/musicgen would, run by the job
runner, its outputs job output URLs. Replicate's `Prefer: wait[=seconds]` and cog's default answer
once the prediction is done (or the wait is over); cog's `Prefer: respond-async` answers at once."""

import asyncio
import base64
import contextlib
import re
from typing import Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import JSONResponse

from leap_ray.api.jobs import JobSubmission
from leap_ray.api.predictions import PREDICTION_ID, PredictionRequest
from leap_ray.api.replicate_models import REPLICATE_MODELS, ReplicateModel, model_of_version
from leap_ray.errors import InvalidRequest, LeapRayError, NotFound
from leap_ray.serve.bodies import read_body, validate_off_loop
from leap_ray.serve.jobs.files import is_url
from leap_ray.serve.jobs.outputs import StoredOutput
from leap_ray.serve.jobs.service import Jobs
from leap_ray.serve.jobs.store import Job
from leap_ray.serve.middleware import client_of
from leap_ray.serve.replicate_model_routes import NAME, OWNER, replicate_model
from leap_ray.serve.routes import ERROR_RESPONSES, json_body

MAX_WAIT_S = 60.0  # Replicate's longest `Prefer: wait`
PAGE_SIZE = 100  # predictions a list answers: Replicate's page
PREFER = Header(
    None,
    description="wait or wait=N (1-60): answer once the prediction is done or N seconds passed; "
    "respond-async: answer at once (202).",
)
PREDICTION = Path(description="The prediction's id.")
_WAIT = re.compile(r'\bwait\b(?:\s*=\s*"?([0-9]+))?')  # wait, wait=5, wait = "5" (RFC 7240)


def _wait_s(prefer: str | None, default: float | None) -> float | None:
    """How long to hold the answer: `Prefer: wait=N` (at most 60 s), `wait` (60 s), `respond-async`
    (0), else `default` (None: until done)."""
    prefer = (prefer or "").lower()
    if "respond-async" in prefer:
        return 0.0
    if (match := _WAIT.search(prefer)) is not None:
        return min(float(match.group(1) or MAX_WAIT_S), MAX_WAIT_S)
    return default


class Predictions:
    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def view(self, job_id: str, request: Request) -> dict[str, Any]:
        job = await self.jobs.get(job_id, client_of(request.scope))
        return await self.jobs.prediction(job, self.jobs.base_url(request))

    async def create(
        self, model: ReplicateModel, body: PredictionRequest, request: Request, wait_s: float | None
    ) -> tuple[dict[str, Any], bool]:
        """The prediction once created and waited for; and whether it is finished. Errors name the
        fields as `model`'s clients do. A chosen id already used (a retried PUT) answers that
        prediction before anything else is read (its uploaded files may have expired since)."""
        if body.id is not None:
            with contextlib.suppress(NotFound):
                job = await self.jobs.get(body.id, client_of(request.scope))
                return await self.answer(job, body, request, wait_s)
        try:
            job_input = await self.with_files(model, body.input, request)
            if model.public_input is not None:
                public = await validate_off_loop(model.public_input, job_input, "input")
                job_input = await asyncio.to_thread(public.service_input)  # opens uploads
            submission = JobSubmission(
                service=model.service,
                input=job_input,
                webhook_url=body.webhook,
                webhook_events_filter=body.job_events(),
            )
            base = self.jobs.base_url(request)
            created = await self.jobs.submit(
                submission,
                base,
                webhook_format="prediction",
                job_id=body.id,
                client=client_of(request.scope) or "",
                # A public model's prediction shows that model and the input as its client wrote it.
                **({"model": model.name, "shown_input": body.input} if model.public_input else {}),
            )
        except LeapRayError as error:
            model.name_public_fields(error)
            raise
        return await self.answer(created, body, request, wait_s)

    async def answer(
        self, job: Job, body: PredictionRequest, request: Request, wait_s: float | None
    ) -> tuple[dict[str, Any], bool]:
        """The prediction of `job` once waited for (wait_s 0: as it is now); and whether it is done."""
        job = await self.jobs.wait(job.id, wait_s)
        view = await self.jobs.prediction(job, self.jobs.base_url(request))
        if body.data_uris and view["status"] == "succeeded":
            view["output"] = await self.data_uris(job, view["output"])
        return view, view["status"] in ("succeeded", "failed", "canceled")

    async def with_files(
        self, model: ReplicateModel, job_input: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        """The input with its file fields' URLs of this key's uploads as the files' data: URIs (read
        off the event loop); another URL there is a 422: none is fetched."""
        if not any(is_url(job_input.get(field)) for field in model.file_fields):
            return job_input
        client = client_of(request.scope)
        files = self.jobs.files
        return await asyncio.to_thread(files.with_files, job_input, model.file_fields, client, "input")

    async def data_uris(self, job: Job, output: list[str] | str) -> list[str] | str:
        """The job's outputs as data: URIs, in the shape of `output` (a list, or one)."""

        def encode(stored: StoredOutput) -> str:
            data = base64.b64encode(self.jobs.outputs.read(stored)).decode()
            return f"data:{stored['content_type']};base64,{data}"

        uris = await asyncio.to_thread(lambda: [encode(stored) for stored in job.outputs])
        return uris if isinstance(output, list) else uris[0]


def prediction_routes(jobs: Jobs) -> APIRouter:
    predictions = Predictions(jobs)
    router = APIRouter(tags=["Replicate and cog predictions"], responses=ERROR_RESPONSES)

    @router.post(
        "/v1/models/{owner}/{name}/predictions",
        status_code=201,
        openapi_extra=json_body(PredictionRequest),
        summary="Create a prediction, Replicate style",
        operation_id="replicate_create_prediction",
    )
    async def create_model_prediction(
        request: Request,
        owner: str = OWNER,
        name: str = NAME,
        prefer: str | None = PREFER,
    ) -> JSONResponse:
        """Models `leap-ray/sdxl` and `leap-ray/musicgen` (our requests as input), and
        `stability-ai/sdxl` and `meta/musicgen` (their inputs on Replicate). With `Prefer: wait[=N]`
        the answer waits for the prediction (at most N, or 60, seconds); 201 with the prediction as it
        then is."""
        model = replicate_model(owner, name)
        body = await read_body(request, PredictionRequest)
        view, _ = await predictions.create(model, body, request, _wait_s(prefer, 0.0))
        return JSONResponse(view, status_code=201)

    @router.post(
        "/v1/predictions",
        status_code=201,
        openapi_extra=json_body(PredictionRequest),
        summary="Create a prediction of a model version, Replicate style",
        operation_id="replicate_create_version_prediction",
    )
    async def create_version_prediction(request: Request, prefer: str | None = PREFER) -> JSONResponse:
        """As POST /v1/models/{owner}/{name}/predictions, with the model named by `version`: as
        `replicate.run("stability-ai/sdxl:<version id>", ...)` sends it."""
        body = await read_body(request, PredictionRequest)
        if body.version is None:
            raise InvalidRequest("version: required here (owner/name or a version id)", param="version")
        model = model_of_version(body.version)
        if model is None:
            raise NotFound(
                f"no model version {body.version}; GET /v1/models/{{owner}}/{{name}} names each model's",
                param="version",
            )
        view, _ = await predictions.create(model, body, request, _wait_s(prefer, 0.0))
        return JSONResponse(view, status_code=201)

    @router.get("/v1/predictions", summary="Recent predictions, Replicate style")
    async def list_predictions(request: Request) -> JSONResponse:
        """This API key's (every key's, for an admin key) most recent predictions, newest first, on one
        page (no `next`)."""
        jobs_listed = await jobs.recent(None, PAGE_SIZE, client_of(request.scope))
        base = jobs.base_url(request)
        results = [await jobs.prediction(job, base) for job in jobs_listed]
        return JSONResponse({"previous": None, "next": None, "results": results})

    @router.post(
        "/predictions",
        openapi_extra=json_body(PredictionRequest),
        summary="Create a prediction, cog style",
        operation_id="cog_create_prediction",
    )
    async def create_cog_prediction(request: Request, prefer: str | None = PREFER) -> JSONResponse:
        """Answers when the prediction is done, or at once (202) with `Prefer: respond-async`."""
        body = await read_body(request, PredictionRequest)
        model = REPLICATE_MODELS[body.model]
        view, done = await predictions.create(model, body, request, _wait_s(prefer, None))
        return JSONResponse(view, status_code=200 if done else 202)

    @router.put(
        "/predictions/{prediction_id}",
        openapi_extra=json_body(PredictionRequest),
        summary="Create a prediction with its id, cog style (idempotent)",
        operation_id="cog_put_prediction",
    )
    async def put_cog_prediction(
        request: Request,
        prediction_id: str = Path(
            pattern=PREDICTION_ID,
            description="The id the client chose: 1-64 of A-Z a-z 0-9 _ . -, not starting with a dot.",
        ),
        prefer: str | None = PREFER,
    ) -> JSONResponse:
        """As POST /predictions, with the id in the path: sent again (a retry), it answers the
        prediction already made rather than making another."""
        body = await read_body(request, PredictionRequest)
        if body.id not in (None, prediction_id):
            raise InvalidRequest("the body's id differs from the path's", param="id")
        body = body.model_copy(update={"id": prediction_id})
        model = REPLICATE_MODELS[body.model]
        view, done = await predictions.create(model, body, request, _wait_s(prefer, None))
        return JSONResponse(view, status_code=200 if done else 202)

    for prefix in ("/v1", ""):
        style = "replicate" if prefix else "cog"

        @router.get(
            f"{prefix}/predictions/{{prediction_id}}",
            summary="A prediction",
            operation_id=f"{style}_get_prediction",
        )
        async def get_prediction(request: Request, prediction_id: str = PREDICTION) -> JSONResponse:
            return JSONResponse(await predictions.view(prediction_id, request))

        @router.post(
            f"{prefix}/predictions/{{prediction_id}}/cancel",
            summary="Cancel a prediction",
            operation_id=f"{style}_cancel_prediction",
        )
        async def cancel_prediction(request: Request, prediction_id: str = PREDICTION) -> JSONResponse:
            """A starting prediction never runs; a processing one stops at its next step."""
            await jobs.cancel(prediction_id, client_of(request.scope))
            return JSONResponse(await predictions.view(prediction_id, request))

    return router
