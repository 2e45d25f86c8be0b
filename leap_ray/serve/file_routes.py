"""Replicate's file routes, which its official client calls for every file given to `run()` (by
default it uploads the file and passes the URL it gets back): `POST /v1/files`, `GET` and `DELETE
/v1/files/{id}`. A prediction's image, mask or melody may then be that URL (`leap_ray.serve.jobs.files`)."""

import asyncio

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from leap_ray.api.files import FileUpload
from leap_ray.serve.bodies import read_form
from leap_ray.serve.jobs.service import Jobs
from leap_ray.serve.middleware import client_of
from leap_ray.serve.routes import ERROR_RESPONSES, form_body

FILE = Path(description="The file's id, as its upload answered it.")


def file_routes(jobs: Jobs) -> APIRouter:
    files = jobs.files
    router = APIRouter(prefix="/v1/files", tags=["Replicate and cog predictions"], responses=ERROR_RESPONSES)

    @router.post(
        "",
        status_code=201,
        openapi_extra=form_body(FileUpload),
        summary="Upload a file, Replicate style",
        operation_id="replicate_create_file",
    )
    async def create_file(request: Request) -> JSONResponse:
        """multipart/form-data: `content` (an image or audio, its type read from its bytes; at most
        the size a request may send of it: 413) and `metadata` (a JSON object). The file is this API
        key's, for `file_ttl_s` (`expires_at`); a prediction's file field takes its `urls.get`."""
        names: dict[str, str] = {}
        upload = await read_form(request, FileUpload, names)
        client = client_of(request.scope) or ""
        file = await asyncio.to_thread(files.create, upload, names.get("content"), client)
        return JSONResponse(file.view(jobs.base_url(request)), status_code=201)

    @router.get("/{file_id}", summary="An uploaded file", operation_id="replicate_get_file")
    async def get_file(request: Request, file_id: str = FILE) -> JSONResponse:
        """The file's record (no content); another key's file is not found."""
        file = await asyncio.to_thread(files.get, file_id, client_of(request.scope))
        return JSONResponse(file.view(jobs.base_url(request)))

    @router.delete(
        "/{file_id}", status_code=204, summary="Delete an uploaded file", operation_id="replicate_delete_file"
    )
    async def delete_file(request: Request, file_id: str = FILE) -> Response:
        await asyncio.to_thread(files.delete, file_id, client_of(request.scope))
        return Response(status_code=204)

    return router
