"""Replicate's and cog's prediction shape, over our jobs: a prediction is a job, its id the job's id."""

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from leap_ray.api.jobs import SERVICE_INPUT, JobEventKind
from leap_ray.api.responses import JobStatus
from leap_ray.api.sdxl import SDXL_EXAMPLE

# A client's prediction id names its outputs' folder: no leading dot, so never "." or "..".
PREDICTION_ID = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
MODELS = {"leap-ray/sdxl": "sdxl", "leap-ray/musicgen": "musicgen"}
SERVICE_MODELS = {service: model for model, service in MODELS.items()}
STATUSES: dict[JobStatus, str] = {
    "queued": "starting",
    "running": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "canceled",
}
# Replicate's webhook events, as our job events: output and logs are progress for us.
WEBHOOK_EVENTS: dict[str, JobEventKind] = {
    "start": "start",
    "output": "progress",
    "logs": "progress",
    "completed": "completed",
}


class PredictionRequest(BaseModel):
    """A prediction: Replicate's body (`POST /v1/models/{owner}/{name}/predictions`) or cog's
    (`POST /predictions`, where `model` picks the model, SDXL when absent)."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"input": SDXL_EXAMPLE}]},
    )

    input: dict[str, Any] = Field(
        description="The same request as POST /v1/sdxl or /v1/musicgen.", json_schema_extra=SERVICE_INPUT
    )
    id: str | None = Field(
        None,
        pattern=PREDICTION_ID,
        description="cog's route only: the prediction's id, chosen by the client; a second request "
        "with the same id gets that prediction, not a new one.",
    )
    model: Literal["leap-ray/sdxl", "leap-ray/musicgen"] = Field(
        "leap-ray/sdxl", description="cog's route only: which model runs it."
    )
    data_uris: bool = Field(
        False,
        description="Outputs as data: URIs (base64) in the answer to this call, when it answers a "
        "finished prediction, rather than as URLs of job outputs.",
    )
    webhook: str | None = Field(
        None, description="A URL POSTed the prediction as it changes (Standard Webhooks)."
    )
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] = Field(
        default_factory=lambda: ["start", "output", "logs", "completed"],
        description="Which events are sent; output and logs both mean progress here.",
    )

    def job_events(self) -> list[JobEventKind]:
        return sorted({WEBHOOK_EVENTS[event] for event in self.webhook_events_filter})


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def prediction_view(job: Any, base: str, outputs: list[str]) -> dict[str, Any]:
    """The prediction of a job, with absolute URLs under `base` (the service's URL, with the
    application's route prefix when it has one), its outputs' links as given (signed or presigned),
    and its input as the job's record keeps it."""
    url = f"{base}/v1/predictions/{job.public_id}"
    output: Any = None
    if job.status == "succeeded":
        output = outputs if job.service == "sdxl" else outputs[0]
    predict_time = (
        job.finished_at - job.started_at
        if job.finished_at is not None and job.started_at is not None
        else None
    )
    return {
        "id": job.public_id,
        "model": SERVICE_MODELS[job.service],
        "version": "latest",
        "status": STATUSES[job.status],
        "input": job.input_summary or {},
        "output": output,
        "error": (job.error or {}).get("message"),
        "logs": "",
        "metrics": {} if predict_time is None else {"predict_time": predict_time},
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.finished_at),
        "urls": {"get": url, "cancel": f"{url}/cancel"},
    }
