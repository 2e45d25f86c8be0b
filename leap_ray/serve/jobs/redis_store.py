"""The job store on Redis, for ingress replicas on many nodes. Same behaviour as the SQLite store:
a job is a hash and its input a string of its own; sorted sets hold all jobs by creation (and each
client's), the queued ones (per service, and per service and client, for turns and limits), the
running ones by heartbeat and the finished ones by finish time, so that claiming, counting, listing a
client's jobs and expiring never walk every job. The state changes that must be atomic (create,
claim, heartbeat, finish, cancel) are Lua scripts, which Redis runs one at a time.

Redis keeps data in memory: without persistence (AOF or RDB snapshots) a Redis restart loses every
job. Turn on `appendonly yes` for a job store."""

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from leap_ray.api.progress import JobProgress
from leap_ray.serve.jobs import redis_scripts as scripts
from leap_ray.serve.jobs.store import (
    ClientQueueFull,
    Job,
    QueueFull,
    WebhookSpec,
    progress_record,
    read_progress,
    read_webhook,
)


def _optional_float(value: str) -> float | None:
    return float(value) if value else None


def _optional_json(value: str) -> Any:
    return json.loads(value) if value else None


class RedisJobStore:
    def __init__(self, url: str, prefix: str = "leap_ray:", timeout_s: float = 5.0) -> None:
        # Socket timeouts: a Redis that stops answering is an error after timeout_s, not a hang.
        self.db = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.prefix = prefix
        self.all, self.queued = prefix + "jobs", prefix + "queued"
        self.running, self.finished = prefix + "running", prefix + "finished"
        self._create = self.db.register_script(scripts.CREATE)
        self._claim = self.db.register_script(scripts.CLAIM)
        self._heartbeat = self.db.register_script(scripts.HEARTBEAT)
        self._finish = self.db.register_script(scripts.FINISH)
        self._cancel = self.db.register_script(scripts.CANCEL)
        self.db.register_script(scripts.INDEX_OLDER_JOBS)(keys=[], args=[prefix])
        self._repair = self.db.register_script(scripts.REPAIR)
        self.repair()

    def repair(self) -> None:
        """Brings the indexes in step with the jobs (another release's replicas may share the data)."""
        self._repair(keys=[], args=[self.prefix])

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _input_key(self, job_id: str) -> str:
        return f"{self.prefix}input:{job_id}"

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
        fields = {
            "id": job.id,
            "service": service,
            "status": "queued",
            "created_at": job.created_at,
            "started_at": "",
            "finished_at": "",
            "error": "",
            "outputs": "[]",
            "cancel_requested": "0",
            "owner": "",
            "heartbeat_at": 0,
            "webhook": webhook.model_dump_json() if webhook else "",
            "progress": "",
            "client": client,
            "seed": "" if job.seed is None else job.seed,
            "input_summary": json.dumps(job.input_summary),
            "model": model,
        }
        keys = [self._key(job.id), self._input_key(job.id)]
        pairs = [item for name, value in fields.items() for item in (name, value)]
        bounds = [max_queued or 0, max_queued_per_client or 0]
        arguments = [self.prefix, *bounds, job.id, job.created_at, service, client, json.dumps(job_input)]
        created = self._create(keys=keys, args=[*arguments, *pairs])
        if created == 0:
            raise QueueFull
        if created == 3:
            raise ClientQueueFull
        return job if created == 1 else self.get(job.id)

    def get(self, job_id: str) -> Job | None:
        return self._job(self.db.hgetall(self._key(job_id)))

    @staticmethod
    def _job(row: dict[str, str]) -> Job | None:
        if not row:
            return None
        return Job(
            id=row["id"],
            service=row["service"],
            status=row["status"],  # type: ignore[arg-type]
            created_at=float(row["created_at"]),
            started_at=_optional_float(row["started_at"]),
            finished_at=_optional_float(row["finished_at"]),
            error=_optional_json(row["error"]),
            outputs=json.loads(row["outputs"]),
            cancel_requested=row["cancel_requested"] == "1",
            webhook=read_webhook(row["webhook"]),
            progress=read_progress(row["progress"]),
            client=row.get("client", ""),
            seed=int(row["seed"]) if row.get("seed") else None,
            input_summary=_optional_json(row.get("input_summary", "")),
            model=row.get("model", ""),
        )

    def input(self, job_id: str) -> dict[str, Any] | None:
        return _optional_json(self.db.get(self._input_key(job_id)) or "")

    def recent(self, status: str | None = None, limit: int = 100, client: str | None = None) -> list[Job]:
        """Newest first (only `status` ones and `client`'s when given: a client's from its own index),
        a page at a time, each page's records fetched in one round trip."""
        jobs: list[Job] = []
        index = self.all if client is None else f"{self.prefix}client-jobs:{client}"
        for start in range(0, self.db.zcard(index), 256):
            with self.db.pipeline(transaction=False) as pipe:
                for job_id in self.db.zrevrange(index, start, start + 255):
                    pipe.hgetall(self._key(job_id))
                rows = pipe.execute()
            for job in map(self._job, rows):
                if job is not None and status in (None, job.status) and client in (None, job.client):
                    jobs.append(job)
                    if len(jobs) == limit:
                        return jobs
        return jobs

    def queued_by_service(self) -> dict[str, int]:
        """How many jobs of each service wait (services with none left out)."""
        services = sorted(self.db.smembers(f"{self.prefix}services"))
        with self.db.pipeline(transaction=False) as pipe:
            for service in services:
                pipe.zcard(f"{self.prefix}queued:{service}")
            counts = pipe.execute()
        return {service: count for service, count in zip(services, counts, strict=True) if count}

    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting queued job was submitted (None: none waits)."""
        oldest = self.db.zrange(self.queued, 0, 0, withscores=True)
        return oldest[0][1] if oldest else None

    def claim(self, owner: str, stale_after_s: float, limits: Mapping[str, int] | None = None) -> Job | None:
        now = time.time()
        bounds = [item for service, limit in (limits or {}).items() for item in (service, limit)]
        job_id = self._claim(keys=[], args=[now, now - stale_after_s, owner, self.prefix, *bounds])
        return self.get(job_id) if job_id else None

    def heartbeat(self, job_id: str, owner: str) -> bool:
        keys = [self._key(job_id), self.running]
        return self._heartbeat(keys=keys, args=[time.time(), owner, job_id]) == 1

    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool:
        error = json.dumps(result["error"]) if result.get("error") else ""
        outputs = json.dumps(result.get("outputs", []))
        keys = [self._key(job_id), self._input_key(job_id), self.finished]
        arguments = [owner, status, time.time(), error, outputs, job_id, self.prefix]
        return self._finish(keys=keys, args=arguments) == 1

    def set_progress(self, job_id: str, owner: str, progress: JobProgress) -> None:
        if self.db.hget(self._key(job_id), "owner") == owner:
            self.db.hset(self._key(job_id), "progress", progress_record(progress))

    def expire(self, finished_before: float) -> list[Job]:
        expired = []
        for job_id in self.db.zrangebyscore(self.finished, "-inf", f"({finished_before}"):
            job = self.get(job_id)
            with self.db.pipeline() as pipe:
                pipe.delete(self._key(job_id), self._input_key(job_id))
                pipe.zrem(self.all, job_id)
                if job is not None:
                    pipe.zrem(f"{self.prefix}client-jobs:{job.client}", job_id)
                pipe.zrem(self.finished, job_id)
                pipe.execute()
            if job is not None:
                expired.append(job)
        return expired

    def cancel(self, job_id: str) -> Job | None:
        keys = [self._key(job_id), self._input_key(job_id), self.finished]
        self._cancel(keys=keys, args=[time.time(), job_id, self.prefix])
        return self.get(job_id)
