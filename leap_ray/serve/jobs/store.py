"""Durable job records behind one small interface, kept by SQLite (one machine:
leap_ray.serve.jobs.sqlite_store) or Redis (many nodes: leap_ray.serve.jobs.redis_store).

A job is claimed by one runner at a time; the runner beats a heartbeat while it works, so a job whose
runner died (its ingress replica was killed) is claimed again by another once the heartbeat is stale.
Cancellation is a flag that the owning runner polls, since the DELETE may reach another replica.

Claims take turns between clients (API keys): the client served longest ago goes next, its oldest job
first, so that one key's thousands of queued jobs delay another key's job by one claim, not by them
all. A claim may be bounded per service (`limits`: the most jobs of a service running at once, over
every runner), so that jobs wait in the store, in their turns, rather than in a model's queue.

A job's input (which may hold a 20 MB melody) is stored apart from its record: reads of the record
(polling, listing) never load it, and it is deleted once the job has finished.

The stores are blocking: the ingress calls them through `StoreClient` (leap_ray.serve.jobs.store_client),
off its event loop and with a deadline."""

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter, model_validator

from leap_ray.api.jobs import JobEventKind
from leap_ray.api.progress import JobProgress, progress_json
from leap_ray.api.responses import JobStatus

WebhookFormat = Literal["job", "prediction"]  # what a webhook POSTs: the job's JSON or the prediction's


class WebhookSpec(BaseModel):
    """A job's webhook, as its record keeps it (JSON in the record's `webhook` field)."""

    model_config = ConfigDict(frozen=True)

    url: str
    events: list[JobEventKind]  # the ones sent (the submission's `webhook_events_filter`)
    format: WebhookFormat = "job"
    base: str  # the service's URL, that the payload's URLs start with (see `service.link_base`)

    @model_validator(mode="before")
    @classmethod
    def _from_older_records(cls, record: Any) -> Any:
        """Reads older records too: the first ones had `prefix` (the route prefix: their jobs' URLs stay
        relative) and no `format` (a job's JSON); later ones kept `prefix` too, `base` empty for jobs."""
        if isinstance(record, dict) and not record.get("base"):
            record = {**record, "base": record.get("prefix", "")}
        return record


# A client-chosen id (PUT /predictions/{id}) is kept per client, as "<id>@<client>": two keys may
# choose the same id, and what one key does with an id never depends on another's jobs (no existence
# oracle). A chosen id has no "@" (PREDICTION_ID) and a generated one is hex, so none collide.
CLIENT_SCOPE = "@"


def scoped_id(job_id: str, client: str) -> str:
    """The store's id of the job that `client` (an API key's id) named `job_id` when it chose the id."""
    return f"{job_id}{CLIENT_SCOPE}{client}"


@dataclass
class Job:
    id: str
    service: str
    status: JobStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    outputs: list[dict[str, str]] = field(default_factory=list)  # {"path", "content_type"}
    cancel_requested: bool = False
    webhook: WebhookSpec | None = None
    progress: JobProgress | None = None  # the model's last progress event (with no preview image)
    client: str = ""  # who created it: an API key's id ("" without keys); only they see it
    seed: int | None = None  # the seed fixed at submission (the input itself is dropped when done)
    input_summary: dict[str, Any] | None = None  # the input `summarised`, kept with the record
    model: str = ""  # the Replicate model a prediction named (e.g. stability-ai/sdxl); "": the service's

    @property
    def public_id(self) -> str:
        """The id its client knows: a chosen id without the client it is kept under (`scoped_id`)."""
        return self.id.partition(CLIENT_SCOPE)[0]

    @classmethod
    def new(
        cls,
        service: str,
        job_input: dict[str, Any],
        webhook: WebhookSpec | None,
        job_id: str | None,
        client: str,
        model: str = "",
        shown_input: dict[str, Any] | None = None,
    ) -> "Job":
        """A job just submitted: queued, its id the client's (kept per client) or a fresh one. Its
        record shows `shown_input` (the input as a public model's client wrote it, with the seed fixed)
        or else the input itself, summarised."""
        job_id = scoped_id(job_id, client) if job_id else uuid.uuid4().hex
        seed = job_input.get("seed")
        summary = summarised(job_input if shown_input is None else {**shown_input, "seed": seed})
        return cls(
            job_id,
            service,
            "queued",
            time.time(),
            webhook=webhook,
            client=client,
            seed=seed,
            input_summary=summary,
            model=model,
        )


LONGEST_KEPT = 256  # characters of a string, items of a list, that a job's record keeps


def summarised(value: Any) -> Any:
    """A job's input as its record keeps it: long strings (base64 tensors, melodies) and long lists
    replaced by what they were, so that the record stays small and never echoes them."""
    if isinstance(value, dict):
        return {key: summarised(item) for key, item in value.items()}
    if isinstance(value, str) and len(value) > LONGEST_KEPT:
        return f"<{len(value)} characters>"
    if isinstance(value, list):
        return f"<list of {len(value)}>" if len(value) > LONGEST_KEPT else [summarised(v) for v in value]
    return value


_PROGRESS = TypeAdapter(JobProgress)


def progress_record(progress: JobProgress) -> str:
    """A progress event as the stores keep it: its JSON, as clients see it."""
    return json.dumps(progress_json(progress))


def read_progress(record: str | None) -> JobProgress | None:
    """The progress event a store kept (`progress_record`); its keys tell SDXL's from MusicGen's."""
    return _PROGRESS.validate_json(record) if record else None


def read_webhook(record: str | None) -> WebhookSpec | None:
    """The webhook a store kept; none is "" (Redis), NULL or, in older SQLite records, JSON null."""
    kept = json.loads(record) if record else None
    return None if kept is None else WebhookSpec.model_validate(kept)


class QueueFull(Exception):
    """`create` found `max_queued` jobs already waiting."""


class ClientQueueFull(QueueFull):
    """`create` found `max_queued_per_client` of this client's jobs already waiting."""


class JobStore(Protocol):
    def create(
        self,
        service: str,
        job_input: dict[str, Any],
        webhook: WebhookSpec | None = None,
        max_queued: int | None = None,
        job_id: str | None = None,
        client: str = "",
        max_queued_per_client: int | None = None,
        model: str = "",
        shown_input: dict[str, Any] | None = None,
    ) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def input(self, job_id: str) -> dict[str, Any] | None: ...
    def recent(self, status: str | None = None, limit: int = 100, client: str | None = None) -> list[Job]: ...
    def queued_by_service(self) -> dict[str, int]: ...
    def oldest_queued_at(self) -> float | None: ...
    def claim(
        self, owner: str, stale_after_s: float, limits: Mapping[str, int] | None = None
    ) -> Job | None: ...
    def heartbeat(self, job_id: str, owner: str) -> bool: ...
    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool: ...
    def cancel(self, job_id: str) -> Job | None: ...
    def set_progress(self, job_id: str, owner: str, progress: JobProgress) -> None: ...
    def expire(self, finished_before: float) -> list[Job]: ...
    def repair(self) -> None: ...
