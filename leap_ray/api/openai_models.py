"""OpenAI's Models API answers (`GET /v1/models`, `GET /v1/models/{model}`): the models this service
serves, by the names its routes take (`/v1/sdxl` and OpenAI's images' `model: "sdxl"`; `/v1/musicgen`;
a job's `service`)."""

from typing import Any, Literal

from pydantic import BaseModel, Field

OWNER = "leap_ray"  # `owned_by`: the service that serves them (the weights are the operator's choice)


class OpenAIModel(BaseModel):
    """A model, as OpenAI's `client.models.retrieve` reads it."""

    id: str = Field(description='The model\'s name, as requests name it (e.g. `model: "sdxl"`).')
    object: Literal["model"] = Field("model", description="Always `model`.")
    created: int = Field(description="Unix time (seconds) at which this ingress replica began serving it.")
    owned_by: str = Field(OWNER, description=f"Always `{OWNER}`.")


class OpenAIModelList(BaseModel):
    """The models served, as OpenAI's `client.models.list` reads them (`object`, `data`) and as
    Replicate's `client.models.list` reads them (`results`, `next`, `previous`): one path, two APIs."""

    object: Literal["list"] = Field("list", description="Always `list`.")
    data: list[OpenAIModel] = Field(description="Every model this service serves.")
    results: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Replicate's models: leap-ray/sdxl, leap-ray/musicgen and the public models' drop-ins.",
    )
    next: None = Field(None, description="Replicate's pagination: one page.")
    previous: None = Field(None, description="Replicate's pagination: one page.")
