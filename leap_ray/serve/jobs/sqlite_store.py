"""The job store on SQLite: one file, no server, shared by every ingress replica on the machine (its
locking makes claims atomic). See leap_ray.serve.jobs.store for what a store does."""

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leap_ray.api.progress import JobProgress
from leap_ray.api.responses import FINISHED
from leap_ray.serve.jobs.store import (
    ClientQueueFull,
    Job,
    QueueFull,
    WebhookSpec,
    progress_record,
    read_progress,
    read_webhook,
)

# (Version 1 kept inputs inside a `jobs` table; these tables leave such a file's old jobs alone.)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_records (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT, outputs TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT, heartbeat_at REAL, webhook TEXT,
    progress TEXT, client TEXT NOT NULL DEFAULT '', seed INTEGER, input_summary TEXT,
    model TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS job_records_by_status ON job_records (status, created_at);
CREATE INDEX IF NOT EXISTS job_records_by_creation ON job_records (created_at);
CREATE TABLE IF NOT EXISTS job_inputs (id TEXT PRIMARY KEY, input TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_turns (client TEXT PRIMARY KEY, turn INTEGER NOT NULL);
"""
# After the added columns: a client's jobs (listing, quotas, claims) without walking everyone's.
_CLIENT_INDEXES = """
CREATE INDEX IF NOT EXISTS job_records_by_client ON job_records (client, created_at);
CREATE INDEX IF NOT EXISTS job_records_by_client_status ON job_records (client, status, service, created_at);
"""
# Columns added since the first release: older files get them, their old jobs with no owner or seed.
_ADDED_COLUMNS = {
    "client": "TEXT NOT NULL DEFAULT ''",
    "seed": "INTEGER",
    "input_summary": "TEXT",
    "model": "TEXT NOT NULL DEFAULT ''",
}
_FINISHED_SQL = ", ".join(f"'{status}'" for status in FINISHED)


def _full(
    db: sqlite3.Connection, client: str, max_queued: int | None, max_queued_per_client: int | None
) -> QueueFull | None:
    """Why a new job of `client` may not queue now, if it may not."""
    if max_queued is not None:
        queued = db.execute("SELECT COUNT(*) FROM job_records WHERE status = 'queued'").fetchone()[0]
        if queued >= max_queued:
            return QueueFull()
    if max_queued_per_client is not None:
        queued = db.execute(
            "SELECT COUNT(*) FROM job_records WHERE client = ? AND status = 'queued'", (client,)
        ).fetchone()[0]
        if queued >= max_queued_per_client:
            return ClientQueueFull()
    return None


def _cancel_orphans(db: sqlite3.Connection, stale_before: float, now: float) -> None:
    """Jobs cancelled while their runner was dying: nobody is left to finish them."""
    orphans = db.execute(
        "SELECT id FROM job_records WHERE status = 'running' AND cancel_requested = 1 AND heartbeat_at < ?",
        (stale_before,),
    ).fetchall()
    for orphan in orphans:
        cancelled = "UPDATE job_records SET status = 'cancelled', finished_at = ? WHERE id = ?"
        db.execute(cancelled, (now, orphan["id"]))
        db.execute("DELETE FROM job_inputs WHERE id = ?", (orphan["id"],))


def _full_services(db: sqlite3.Connection, limits: Mapping[str, int] | None) -> list[str]:
    """The services running as many jobs as their limit allows."""
    if not limits:
        return []
    running = dict(
        db.execute(
            "SELECT service, COUNT(*) FROM job_records WHERE status = 'running' GROUP BY service"
        ).fetchall()
    )
    return [service for service, limit in limits.items() if running.get(service, 0) >= limit]


def _next_in_turn(db: sqlite3.Connection, full_services: list[str]) -> str | None:
    """The oldest claimable job of the client whose turn it is (served longest ago); clients with
    nothing queued lose their turn row (a new job gives them one back, at the front)."""
    skip = ", ".join("?" * len(full_services))
    for turn in db.execute("SELECT client FROM job_turns ORDER BY turn, client").fetchall():
        client = turn["client"]
        row = db.execute(
            "SELECT id FROM job_records WHERE client = ? AND status = 'queued' "
            f"AND service NOT IN ({skip}) ORDER BY created_at LIMIT 1",
            (client, *full_services),
        ).fetchone()
        if row is not None:
            db.execute(
                "UPDATE job_turns SET turn = (SELECT MAX(turn) + 1 FROM job_turns) WHERE client = ?",
                (client,),
            )
            return row["id"]
        if (
            not full_services
            or not db.execute(
                "SELECT 1 FROM job_records WHERE client = ? AND status = 'queued' LIMIT 1", (client,)
            ).fetchone()
        ):
            db.execute("DELETE FROM job_turns WHERE client = ?", (client,))
    return None


def _job(row: sqlite3.Row) -> Job:
    """A job as its record's row holds it."""
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
        model=row["model"],
    )


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
            db.executescript(_CLIENT_INDEXES)
        self.repair()

    def repair(self) -> None:
        """A turn for every client with queued jobs: a file from before turns, or jobs another
        release's replicas queued during a rolling upgrade, would have none (and never be claimed)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO job_turns SELECT DISTINCT client, 0 FROM job_records "
                "WHERE status = 'queued'"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)  # explicit BEGINs
        db.row_factory = sqlite3.Row
        return db

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
    ) -> Job:
        """A new queued job; raises QueueFull when `max_queued` wait already, ClientQueueFull when
        `max_queued_per_client` of this client's do (both checked atomically).
        With a `job_id` the client chose that this client's job has already, that job, unchanged
        (idempotent); another client's job with the same id is another job (`scoped_id`)."""
        job = Job.new(service, job_input, webhook, job_id, client, model, shown_input)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            existing = db.execute("SELECT * FROM job_records WHERE id = ?", (job.id,)).fetchone()
            if existing is not None:
                db.execute("ROLLBACK")
                return _job(existing)
            full = _full(db, client, max_queued, max_queued_per_client)
            if full is not None:
                db.execute("ROLLBACK")
                raise full
            db.execute(
                "INSERT INTO job_records "
                "(id, service, status, created_at, outputs, webhook, client, seed, input_summary, model) "
                "VALUES (?, ?, ?, ?, '[]', ?, ?, ?, ?, ?)",
                (
                    job.id,
                    service,
                    job.status,
                    job.created_at,
                    webhook.model_dump_json() if webhook else None,
                    client,
                    job.seed,
                    json.dumps(job.input_summary),
                    model,
                ),
            )
            db.execute("INSERT INTO job_inputs (id, input) VALUES (?, ?)", (job.id, json.dumps(job_input)))
            db.execute("INSERT OR IGNORE INTO job_turns (client, turn) VALUES (?, 0)", (client,))
            db.execute("COMMIT")
        return job

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM job_records WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def input(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT input FROM job_inputs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row["input"]) if row else None

    def recent(self, status: str | None = None, limit: int = 100, client: str | None = None) -> list[Job]:
        """Newest first; only `status` ones and `client`'s when given (a client's by its own index)."""
        conditions = {"status = ?": status, "client = ?": client}
        chosen = {condition: value for condition, value in conditions.items() if value is not None}
        where = f" WHERE {' AND '.join(chosen)}" if chosen else ""
        with self._connect() as db:
            query = f"SELECT * FROM job_records{where} ORDER BY created_at DESC LIMIT ?"
            rows = db.execute(query, (*chosen.values(), limit)).fetchall()
        return [_job(row) for row in rows]

    def queued_by_service(self) -> dict[str, int]:
        """How many jobs of each service wait (services with none left out)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT service, COUNT(*) FROM job_records WHERE status = 'queued' GROUP BY service"
            ).fetchall()
        return {service: count for service, count in rows}

    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting queued job was submitted (None: none waits)."""
        with self._connect() as db:
            return db.execute("SELECT MIN(created_at) FROM job_records WHERE status = 'queued'").fetchone()[0]

    def claim(self, owner: str, stale_after_s: float, limits: Mapping[str, int] | None = None) -> Job | None:
        """A running job whose runner went silent, else the next client's oldest queued job (of a
        service with fewer than `limits[service]` running), now owned by `owner`."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # one claimer at a time across processes
            _cancel_orphans(db, now - stale_after_s, now)
            row = db.execute(
                "SELECT id FROM job_records WHERE cancel_requested = 0 AND status = 'running' "
                "AND heartbeat_at < ? ORDER BY created_at LIMIT 1",
                (now - stale_after_s,),
            ).fetchone()
            job_id = row["id"] if row is not None else _next_in_turn(db, _full_services(db, limits))
            if job_id is not None:
                db.execute(
                    "UPDATE job_records SET status = 'running', owner = ?, heartbeat_at = ?, "
                    "started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (owner, now, now, job_id),
                )
            db.execute("COMMIT")
        return self.get(job_id) if job_id is not None else None

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
        return [_job(row) for row in rows]

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
