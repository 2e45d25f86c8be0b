"""Durable job records behind one small interface. SQLite is the embedded default: one file, no
server, shared by every ingress replica on the machine (its locking makes claims atomic).

A job is claimed by one runner at a time; the runner beats a heartbeat while it works, so a job whose
runner died (its ingress replica was killed) is claimed again by another once the heartbeat is stale.
Cancellation is a flag that the owning runner polls, since the DELETE may reach another replica.

A job's input (which may hold a 20 MB melody) is stored apart from its record: reads of the record
(polling, listing) never load it, and it is deleted once the job has finished.

The stores are blocking: the ingress calls them through `StoreClient` (leap_ray.serve.jobs.store_client),
off its event loop and with a deadline."""

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter, model_validator

from leap_ray.api.jobs import JobEventKind
from leap_ray.api.progress import JobProgress, progress_json
from leap_ray.api.responses import FINISHED, JobStatus

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
    ) -> "Job":
        """A job just submitted: queued, its id the client's (kept per client) or a fresh one."""
        job_id = scoped_id(job_id, client) if job_id else uuid.uuid4().hex
        seed, summary = job_input.get("seed"), summarised(job_input)
        return cls(
            job_id,
            service,
            "queued",
            time.time(),
            webhook=webhook,
            client=client,
            seed=seed,
            input_summary=summary,
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


class JobStore(Protocol):
    def create(
        self,
        service: str,
        job_input: dict[str, Any],
        webhook: WebhookSpec | None = None,
        max_queued: int | None = None,
        job_id: str | None = None,
        client: str = "",
    ) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def input(self, job_id: str) -> dict[str, Any] | None: ...
    def recent(self, status: str | None = None, limit: int = 100, client: str | None = None) -> list[Job]: ...
    def queued_count(self) -> int: ...
    def oldest_queued_at(self) -> float | None: ...
    def claim(self, owner: str, stale_after_s: float) -> Job | None: ...
    def heartbeat(self, job_id: str, owner: str) -> bool: ...
    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool: ...
    def cancel(self, job_id: str) -> Job | None: ...
    def set_progress(self, job_id: str, owner: str, progress: JobProgress) -> None: ...
    def expire(self, finished_before: float) -> list[Job]: ...


# (Version 1 kept inputs inside a `jobs` table; these tables leave such a file's old jobs alone.)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_records (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT, outputs TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT, heartbeat_at REAL, webhook TEXT,
    progress TEXT, client TEXT NOT NULL DEFAULT '', seed INTEGER, input_summary TEXT
);
CREATE INDEX IF NOT EXISTS job_records_by_status ON job_records (status, created_at);
CREATE INDEX IF NOT EXISTS job_records_by_creation ON job_records (created_at);
CREATE TABLE IF NOT EXISTS job_inputs (id TEXT PRIMARY KEY, input TEXT NOT NULL);
"""
# Columns added since the first release: older files get them, their old jobs with no owner or seed.
_ADDED_COLUMNS = {"client": "TEXT NOT NULL DEFAULT ''", "seed": "INTEGER", "input_summary": "TEXT"}
_FINISHED_SQL = ", ".join(f"'{status}'" for status in FINISHED)


class SQLiteJobStore:
    def __init__(self, path: str | Path, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s  # how long a call waits for another's lock before failing
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(job_records)")}
            for column, declaration in _ADDED_COLUMNS.items():  # a file from before they existed
                if column not in columns:
                    db.execute(f"ALTER TABLE job_records ADD COLUMN {column} {declaration}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)  # explicit BEGINs
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            service=row["service"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=json.loads(row["error"]) if row["error"] else None,
            outputs=json.loads(row["outputs"]),
            cancel_requested=bool(row["cancel_requested"]),
            webhook=read_webhook(row["webhook"]),
            progress=read_progress(row["progress"]),
            client=row["client"],
            seed=row["seed"],
            input_summary=json.loads(row["input_summary"]) if row["input_summary"] else None,
        )

    def create(
        self,
        service: str,
        job_input: dict[str, Any],
        webhook: WebhookSpec | None = None,
        max_queued: int | None = None,
        job_id: str | None = None,
        client: str = "",
    ) -> Job:
        """A new queued job; raises QueueFull when `max_queued` wait already (checked atomically).
        With a `job_id` the client chose that this client's job has already, that job, unchanged
        (idempotent); another client's job with the same id is another job (`scoped_id`)."""
        job = Job.new(service, job_input, webhook, job_id, client)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            existing = db.execute("SELECT * FROM job_records WHERE id = ?", (job.id,)).fetchone()
            if existing is not None:
                db.execute("ROLLBACK")
                return self._job(existing)
            if max_queued is not None and self._queued(db) >= max_queued:
                db.execute("ROLLBACK")
                raise QueueFull
            db.execute(
                "INSERT INTO job_records "
                "(id, service, status, created_at, outputs, webhook, client, seed, input_summary) "
                "VALUES (?, ?, ?, ?, '[]', ?, ?, ?, ?)",
                (
                    job.id,
                    service,
                    job.status,
                    job.created_at,
                    webhook.model_dump_json() if webhook else None,
                    client,
                    job.seed,
                    json.dumps(job.input_summary),
                ),
            )
            db.execute("INSERT INTO job_inputs (id, input) VALUES (?, ?)", (job.id, json.dumps(job_input)))
            db.execute("COMMIT")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM job_records WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def input(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT input FROM job_inputs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row["input"]) if row else None

    def recent(self, status: str | None = None, limit: int = 100, client: str | None = None) -> list[Job]:
        """Newest first; only `status` ones and `client`'s when given."""
        conditions = {"status = ?": status, "client = ?": client}
        chosen = {condition: value for condition, value in conditions.items() if value is not None}
        where = f" WHERE {' AND '.join(chosen)}" if chosen else ""
        with self._connect() as db:
            query = f"SELECT * FROM job_records{where} ORDER BY created_at DESC LIMIT ?"
            rows = db.execute(query, (*chosen.values(), limit)).fetchall()
        return [self._job(row) for row in rows]

    def queued_count(self) -> int:
        with self._connect() as db:
            return self._queued(db)

    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting queued job was submitted (None: none waits)."""
        with self._connect() as db:
            return db.execute("SELECT MIN(created_at) FROM job_records WHERE status = 'queued'").fetchone()[0]

    @staticmethod
    def _queued(db: sqlite3.Connection) -> int:
        return db.execute("SELECT COUNT(*) FROM job_records WHERE status = 'queued'").fetchone()[0]

    def claim(self, owner: str, stale_after_s: float) -> Job | None:
        """The oldest queued job, or a running one whose runner went silent, now owned by `owner`."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # one claimer at a time across processes
            orphans = db.execute(  # cancelled while its runner was dying: nobody is left to finish it
                "SELECT id FROM job_records "
                "WHERE status = 'running' AND cancel_requested = 1 AND heartbeat_at < ?",
                (now - stale_after_s,),
            ).fetchall()
            for orphan in orphans:
                db.execute(
                    "UPDATE job_records SET status = 'cancelled', finished_at = ? WHERE id = ?",
                    (now, orphan["id"]),
                )
                db.execute("DELETE FROM job_inputs WHERE id = ?", (orphan["id"],))
            row = db.execute(
                "SELECT id FROM job_records WHERE cancel_requested = 0 AND (status = 'queued' OR "
                "(status = 'running' AND heartbeat_at < ?)) ORDER BY created_at LIMIT 1",
                (now - stale_after_s,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE job_records SET status = 'running', owner = ?, heartbeat_at = ?, "
                    "started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (owner, now, now, row["id"]),
                )
            db.execute("COMMIT")
        return self.get(row["id"]) if row is not None else None

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Keeps the claim; False when the job should stop (cancel requested, or no longer ours)."""
        with self._connect() as db:
            updated = db.execute(
                "UPDATE job_records SET heartbeat_at = ? WHERE id = ? AND owner = ? AND status = 'running' "
                "AND cancel_requested = 0",
                (time.time(), job_id, owner),
            ).rowcount
        return updated == 1

    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            updated = db.execute(
                "UPDATE job_records SET status = ?, finished_at = ?, error = ?, outputs = ? "
                "WHERE id = ? AND owner = ? AND status = 'running'",
                (
                    status,
                    time.time(),
                    json.dumps(result["error"]) if result.get("error") else None,
                    json.dumps(result.get("outputs", [])),
                    job_id,
                    owner,
                ),
            ).rowcount
            if updated:
                db.execute("DELETE FROM job_inputs WHERE id = ?", (job_id,))
            db.execute("COMMIT")
        return updated == 1

    def set_progress(self, job_id: str, owner: str, progress: JobProgress) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE job_records SET progress = ? WHERE id = ? AND owner = ?",
                (progress_record(progress), job_id, owner),
            )

    def expire(self, finished_before: float) -> list[Job]:
        """Deletes the jobs that finished before the given time and returns them."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                f"SELECT * FROM job_records WHERE finished_at < ? AND status IN ({_FINISHED_SQL})",
                (finished_before,),
            ).fetchall()
            ids = [(row["id"],) for row in rows]
            db.executemany("DELETE FROM job_records WHERE id = ?", ids)
            db.executemany("DELETE FROM job_inputs WHERE id = ?", ids)
            db.execute("COMMIT")
        return [self._job(row) for row in rows]

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once (and its input dropped); a running one is flagged for
        its runner."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cancelled = db.execute(
                "UPDATE job_records SET status = 'cancelled', finished_at = ?, cancel_requested = 1 "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            ).rowcount
            if cancelled:
                db.execute("DELETE FROM job_inputs WHERE id = ?", (job_id,))
            db.execute(
                "UPDATE job_records SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,)
            )
            db.execute("COMMIT")
        return self.get(job_id)
