"""Jobs: submit a request of either service, get an id at once, poll, fetch outputs, cancel."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from leap_ray.api.musicgen import MUSICGEN_EXAMPLE, MusicGenRequest
from leap_ray.api.sdxl import SDXLRequest

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

    def stored_input(self, request: SDXLRequest | MusicGenRequest) -> dict[str, Any]:
        """What the job keeps of its input, which the runner validates again: the client's fields with
        `request`'s seed (fixed, so that a job taken over gives the same outputs), and its uploaded
        images as PNG of the pixels `request` decoded. The client's bytes were the costly decode (a
        file of 400 k scans); ours is bounded and cheap. Encodes PNG: for a worker thread."""
        uploads = request.uploads_as_png() if isinstance(request, SDXLRequest) else {}
        return {**self.input, **uploads, "seed": request.seed}
