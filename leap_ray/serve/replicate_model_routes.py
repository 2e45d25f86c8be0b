"""Replicate's model routes, as its clients call them before a prediction: `models.get` and a model's
versions (`replicate.run("owner/name:version")` reads the version's schema)."""

from typing import Any

from fastapi import APIRouter, Path

from leap_ray.api.replicate_models import REPLICATE_MODELS, ReplicateModel
from leap_ray.errors import NotFound
from leap_ray.serve.routes import ERROR_RESPONSES

OWNER = Path(description="The model's owner: leap-ray, stability-ai or meta.")
NAME = Path(description="The model: sdxl or musicgen.")
CREATED_AT = "2026-12-06T00:00:00+00:00"  # Replicate's clients parse the field; no version ever changes


def replicate_model(owner: str, name: str) -> ReplicateModel:
    """The model `owner/name` names, or a 404 naming `model`."""
    model = REPLICATE_MODELS.get(f"{owner}/{name}")
    if model is None:
        raise NotFound(f"no model {owner}/{name}; models: {', '.join(REPLICATE_MODELS)}", param="model")
    return model


def version_view(model: ReplicateModel) -> dict[str, Any]:
    return {
        "id": model.version,
        "created_at": CREATED_AT,
        "cog_version": "leap_ray",  # no cog: the service itself answers
        "openapi_schema": model.openapi_schema,
    }


def model_view(model: ReplicateModel) -> dict[str, Any]:
    owner, _, name = model.name.partition("/")
    return {
        "url": f"/v1/models/{model.name}",
        "owner": owner,
        "name": name,
        "description": model.description,
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        "latest_version": version_view(model),
    }


def replicate_model_routes() -> APIRouter:
    router = APIRouter(
        prefix="/v1/models/{owner}/{name}", tags=["Replicate and cog predictions"], responses=ERROR_RESPONSES
    )

    @router.get("", summary="A model, Replicate style", operation_id="replicate_get_model")
    async def get_model(owner: str = OWNER, name: str = NAME) -> dict[str, Any]:
        """`leap-ray/sdxl` and `leap-ray/musicgen` take our requests; `stability-ai/sdxl` and
        `meta/musicgen` their inputs on Replicate. `latest_version.openapi_schema` has each input."""
        return model_view(replicate_model(owner, name))

    @router.get("/versions", summary="A model's versions", operation_id="replicate_list_versions")
    async def list_versions(owner: str = OWNER, name: str = NAME) -> dict[str, Any]:
        """One version: this service's."""
        return {"previous": None, "next": None, "results": [version_view(replicate_model(owner, name))]}

    @router.get("/versions/{version_id}", summary="A model version", operation_id="replicate_get_version")
    async def get_version(
        owner: str = OWNER,
        name: str = NAME,
        version_id: str = Path(description="Our version id, or a public version id clients pin."),
    ) -> dict[str, Any]:
        """This service's version of the model, also under the public version ids its clients pin."""
        model = replicate_model(owner, name)
        if version_id != model.version and version_id not in model.known_versions:
            raise NotFound(
                f"no version {version_id} of {model.name}; its version: {model.version}", param="version"
            )
        return version_view(model)

    return router
