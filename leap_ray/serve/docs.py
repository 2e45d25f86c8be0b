"""The API docs pages, served with no network: Swagger UI at /docs and ReDoc at /redoc, their
JavaScript and CSS from the `fastapi-offline` package (which vendors them, MIT-licensed) rather
than from a CDN, so the pages render on a machine without internet."""

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from leap_ray.errors import NotFound

ASSETS = resources.files("fastapi_offline") / "static"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
ASSET_PREFIX = "/docs/assets"


def docs_routes(title: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, "/openapi.json"),
            title=f"{title} - API docs",
            oauth2_redirect_url=url(request, "/docs/oauth2-redirect"),
            swagger_js_url=url(request, f"{ASSET_PREFIX}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSET_PREFIX}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSET_PREFIX}/favicon.png"),
        )

    @router.get("/docs/oauth2-redirect")
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, "/openapi.json"),
            title=f"{title} - API reference",
            redoc_js_url=url(request, f"{ASSET_PREFIX}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSET_PREFIX}/favicon.png"),
            with_google_fonts=False,
        )

    @router.get(ASSET_PREFIX + "/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in ASSET_NAMES:
            raise NotFound(f"no docs asset {name}", param="name")
        with resources.as_file(ASSETS / name) as path:
            return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])

    return router
