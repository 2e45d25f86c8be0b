"""The playground page at `/`: one static HTML file of the package (no build step), its base URL set to
the application's route prefix so that its calls (openapi.json, v1/...) reach this application."""

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

PAGE = resources.files("leap_ray") / "serve" / "static" / "playground.html"


def playground_routes() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    page = PAGE.read_text()

    @router.get("/")
    async def playground(request: Request) -> HTMLResponse:
        return HTMLResponse(page.replace("{{BASE}}", f"{request.scope.get('root_path', '')}/"))

    return router
