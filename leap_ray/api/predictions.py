"""Replicate's and cog's prediction shape, over our jobs: a prediction is a job, its id the job's id."""

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leap_ray.api.jobs import SERVICE_INPUT, JobEventKind
from leap_ray.api.progress import StepProgress
from leap_ray.api.replicate_models import REPLICATE_MODELS
from leap_ray.api.responses import JobStatus
from leap_ray.api.sdxl import SDXL_EXAMPLE
from leap_ray.errors import InvalidRequest

# A client's prediction id names its outputs' folder: no leading dot, so never "." or "..".
PREDICTION_ID = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
# The model a prediction names: ours, whichever model's inputs it came with.
SERVICE_MODELS = {"sdxl": "leap-ray/sdxl", "musicgen": "leap-ray/musicgen"}
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
    """A prediction: Replicate's body (`POST /v1/models/{owner}/{name}/predictions`, or
    `POST /v1/predictions` with `version`) or cog's (`POST /predictions`, where `model` picks the
    model, SDXL when absent)."""

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        # `version` is read by POST /v1/predictions only; the other routes name the model themselves.
        json_schema_extra={"examples": [{"version": "leap-ray/sdxl", "input": SDXL_EXAMPLE}]},
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
    version: str | None = Field(
        None,
        max_length=200,
        description="POST /v1/predictions only: the model, as `owner/name`, `owner/name:version`, "
        "a version id GET /v1/models/{owner}/{name} gives, or a public model's version id.",
    )
    stream: bool = Field(False, description="Replicate's streaming output: not supported (false).")
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

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, stream: bool) -> bool:
        if stream:
            raise InvalidRequest(
                "stream: not supported; POST /v1/sdxl or /v1/musicgen with Accept: text/event-stream "
                "streams progress and audio",
                param="stream",
            )
        return stream

    def job_events(self) -> list[JobEventKind]:
        return sorted({WEBHOOK_EVENTS[event] for event in self.webhook_events_filter})


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def _progress_line(progress: Any) -> str:
    if isinstance(progress, StepProgress):
        stage = f"{progress.stage} " if progress.stage else ""
        return f"{stage}step {progress.step}/{progress.total}"
    return f"{progress.seconds:g}/{progress.total:g} s of audio"


def prediction_logs(job: Any) -> str:
    """The prediction's `logs`: what the job's record tells of its run (its seed, when it started, its
    last progress, how it ended), one line each."""
    lines = [] if job.seed is None else [f"Using seed: {job.seed}"]
    if job.started_at is not None:
        lines.append(f"Started at {_iso(job.started_at)}")
    if job.progress is not None:
        lines.append(_progress_line(job.progress))
    if job.finished_at is not None:
        error = (job.error or {}).get("message")
        lines.append(f"{STATUSES[job.status].capitalize()}" + (f": {error}" if error else ""))
    return "".join(f"{line}\n" for line in lines)


def prediction_view(job: Any, base: str, outputs: list[str]) -> dict[str, Any]:
    """The prediction of a job, with absolute URLs under `base` (the service's URL, with the
    application's route prefix when it has one), its outputs' links as given (signed or presigned),
    and its model and input as the job's record keeps them (a public model's prediction: that model,
    and its input in that model's names)."""
    url = f"{base}/v1/predictions/{job.public_id}"
    output: Any = None
    if job.status == "succeeded":
        output = outputs if job.service == "sdxl" else outputs[0]
    predict_time = (
        job.finished_at - job.started_at
        if job.finished_at is not None and job.started_at is not None
        else None
    )
    model = job.model or SERVICE_MODELS[job.service]
    return {
        "id": job.public_id,
        "model": model,
        "version": REPLICATE_MODELS[model].version,
        "status": STATUSES[job.status],
        "input": job.input_summary or {},
        "output": output,
        "error": (job.error or {}).get("message"),
        "logs": prediction_logs(job),
        "metrics": {} if predict_time is None else {"predict_time": predict_time},
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.finished_at),
        "urls": {"get": url, "cancel": f"{url}/cancel"},
    }
