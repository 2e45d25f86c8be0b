"""Durable job records behind one small interface. SQLite is the embedded default: one file, no
server, shared by every ingress replica on the machine (its locking makes claims atomic).

A job is claimed by one runner at a time; the runner beats a heartbeat while it works, so a job whose
runner died (its ingress replica was killed) is claimed again by another once the heartbeat is stale.
Cancellation is a flag that the owning runner polls, since the DELETE may reach another replica."""

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Job:
    id: str
    service: str
    status: str  # queued, running, succeeded, failed, cancelled
    input: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    outputs: list[dict[str, str]] = field(default_factory=list)  # {"path", "content_type"}
    cancel_requested: bool = False
    webhook: dict[str, Any] | None = None  # {"url", "events", "prefix"}
    progress: dict[str, Any] | None = None  # the model's last progress event


class JobStore(Protocol):
    def create(
        self, service: str, job_input: dict[str, Any], webhook: dict[str, Any] | None = None
    ) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def recent(self, status: str | None = None, limit: int = 100) -> list[Job]: ...
    def claim(self, owner: str, stale_after_s: float) -> Job | None: ...
    def heartbeat(self, job_id: str, owner: str) -> bool: ...
    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool: ...
    def cancel(self, job_id: str) -> Job | None: ...
    def set_progress(self, job_id: str, owner: str, progress: dict[str, Any]) -> None: ...
    def expire(self, finished_before: float) -> list[Job]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT, outputs TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT, heartbeat_at REAL, webhook TEXT,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
"""


class SQLiteJobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions below
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            service=row["service"],
            status=row["status"],
            input=json.loads(row["input"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=json.loads(row["error"]) if row["error"] else None,
            outputs=json.loads(row["outputs"]),
            cancel_requested=bool(row["cancel_requested"]),
            webhook=json.loads(row["webhook"]) if row["webhook"] else None,
            progress=json.loads(row["progress"]) if row["progress"] else None,
        )

    def create(self, service: str, job_input: dict[str, Any], webhook: dict[str, Any] | None = None) -> Job:
        job = Job(uuid.uuid4().hex, service, "queued", job_input, created_at=time.time(), webhook=webhook)
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, service, status, input, created_at, outputs, webhook) "
                "VALUES (?, ?, ?, ?, ?, '[]', ?)",
                (job.id, service, job.status, json.dumps(job_input), job.created_at, json.dumps(webhook)),
            )
        return job

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def recent(self, status: str | None = None, limit: int = 100) -> list[Job]:
        query, parameters = "SELECT * FROM jobs", ()
        if status:
            query, parameters = query + " WHERE status = ?", (status,)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at DESC LIMIT ?", (*parameters, limit)).fetchall()
        return [self._job(row) for row in rows]

    def claim(self, owner: str, stale_after_s: float) -> Job | None:
        """The oldest queued job, or a running one whose runner went silent, now owned by `owner`."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # one claimer at a time across processes
            db.execute(  # cancelled while its runner was dying: nobody is left to finish it
                "UPDATE jobs SET status = 'cancelled', finished_at = ? "
                "WHERE status = 'running' AND cancel_requested = 1 AND heartbeat_at < ?",
                (now, now - stale_after_s),
            )
            row = db.execute(
                "SELECT * FROM jobs WHERE cancel_requested = 0 AND (status = 'queued' OR "
                "(status = 'running' AND heartbeat_at < ?)) ORDER BY created_at LIMIT 1",
                (now - stale_after_s,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE jobs SET status = 'running', owner = ?, heartbeat_at = ?, "
                    "started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (owner, now, now, row["id"]),
                )
            db.execute("COMMIT")
        return self.get(row["id"]) if row is not None else None

    def heartbeat(self, job_id: str, owner: str) -> bool:
        """Keeps the claim; False when the job should stop (cancel requested, or no longer ours)."""
        with self._connect() as db:
            updated = db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND owner = ? AND status = 'running' "
                "AND cancel_requested = 0",
                (time.time(), job_id, owner),
            ).rowcount
        return updated == 1

    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool:
        with self._connect() as db:
            updated = db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, outputs = ? "
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
        return updated == 1

    def set_progress(self, job_id: str, owner: str, progress: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND owner = ?",
                (json.dumps(progress), job_id, owner),
            )

    def expire(self, finished_before: float) -> list[Job]:
        """Deletes the jobs that finished before the given time and returns them."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT * FROM jobs WHERE finished_at < ? AND status IN ('succeeded', 'failed', 'cancelled')",
                (finished_before,),
            ).fetchall()
            db.executemany("DELETE FROM jobs WHERE id = ?", [(row["id"],) for row in rows])
            db.execute("COMMIT")
        return [self._job(row) for row in rows]

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is flagged for its runner."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, cancel_requested = 1 "
                "WHERE id = ? AND status = 'queued'",
                (time.time(), job_id),
            )
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))
            db.execute("COMMIT")
        return self.get(job_id)
