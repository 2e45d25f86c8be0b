"""Jobs: submit a request of either service, get an id at once, poll, fetch outputs, cancel."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from leap_ray.api.musicgen import MUSICGEN_EXAMPLE

# A job's input is one service's request, validated as that service's endpoint does: in the schema,
# either request (the ingress adds both to the spec's components).
SERVICE_INPUT = {
    "anyOf": [{"$ref": "#/components/schemas/SDXLRequest"}, {"$ref": "#/components/schemas/MusicGenRequest"}]
}
# What happens to a job, as its webhooks report it (the `X-LeapRay-Event` header).
JobEventKind = Literal["start", "progress", "completed"]


class JobSubmission(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"service": "musicgen", "input": MUSICGEN_EXAMPLE}]},
    )

    service: Literal["sdxl", "musicgen"] = Field(description="Which model runs the job.")
    input: dict[str, Any] = Field(
        description="The same request as POST /v1/sdxl or /v1/musicgen; invalid input gets a 422 at once.",
        json_schema_extra=SERVICE_INPUT,
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="Where to POST the job's JSON, signed as Standard Webhooks specify "
        "(webhook-id, webhook-timestamp, webhook-signature).",
    )
    webhook_events_filter: list[JobEventKind] = Field(
        ["completed"],
        min_length=1,
        description="Which events to send: start, progress (at most one a second), completed.",
    )
