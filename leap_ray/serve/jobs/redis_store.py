"""The job store on Redis, for ingress replicas on many nodes. Same behaviour as the SQLite store:
a job is a hash and its input a string of its own; sorted sets hold all jobs by creation, the queued
ones, the running ones by heartbeat and the finished ones by finish time, so that claiming, counting
and expiring never walk every job. The state changes that must be atomic (claim, heartbeat, finish,
cancel) are Lua scripts, which Redis runs one at a time.

Redis keeps data in memory: without persistence (AOF or RDB snapshots) a Redis restart loses every
job. Turn on `appendonly yes` for a job store."""

import json
import time
from typing import Any

import redis

from leap_ray.api.progress import JobProgress
from leap_ray.serve.jobs.store import (
    Job,
    QueueFull,
    WebhookSpec,
    progress_record,
    read_progress,
    read_webhook,
)

# KEYS: queued, running, finished. ARGV: now, stale_before, owner, prefix.
_CLAIM = """
local now, stale_before, owner, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', stale_before)) do
  local key = prefix .. 'job:' .. id
  redis.call('ZREM', KEYS[2], id)
  if redis.call('HGET', key, 'cancel_requested') == '1' then
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now)
    redis.call('DEL', prefix .. 'input:' .. id)
    redis.call('ZADD', KEYS[3], now, id)
  else
    redis.call('HSET', key, 'owner', owner, 'heartbeat_at', now)
    redis.call('ZADD', KEYS[2], now, id)
    return id
  end
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if not oldest then return false end
local key = prefix .. 'job:' .. oldest
redis.call('ZREM', KEYS[1], oldest)
redis.call('HSET', key, 'status', 'running', 'owner', owner, 'heartbeat_at', now)
if redis.call('HGET', key, 'started_at') == '' then redis.call('HSET', key, 'started_at', now) end
redis.call('ZADD', KEYS[2], now, oldest)
return oldest
"""
# KEYS: job, input, all, queued. ARGV: max queued (0: no bound), id, created_at, input, then the
# job's fields as name, value pairs.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if tonumber(ARGV[1]) > 0 and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1
"""
# KEYS: job, running. ARGV: now, owner, id.
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[2] and redis.call('HGET', KEYS[1], 'status') == 'running'
   and redis.call('HGET', KEYS[1], 'cancel_requested') == '0' then
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
  return 1
end
return 0
"""
# KEYS: job, input, running, finished. ARGV: owner, status, now, error, outputs, id.
_FINISH = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'outputs', ARGV[5])
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
  return 1
end
return 0
"""
# KEYS: job, input, queued, finished. ARGV: now, id.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'cancel_requested', '1')
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[1], ARGV[2])
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return status
"""


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
        self._create = self.db.register_script(_CREATE)
        self._claim = self.db.register_script(_CLAIM)
        self._heartbeat = self.db.register_script(_HEARTBEAT)
        self._finish = self.db.register_script(_FINISH)
        self._cancel = self.db.register_script(_CANCEL)

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
    ) -> Job:
        """A new queued job; raises QueueFull when `max_queued` wait already (checked atomically).
        With a `job_id` the client chose that this client's job has already, that job, unchanged
        (idempotent); another client's job with the same id is another job (`scoped_id`)."""
        job = Job.new(service, job_input, webhook, job_id, client)
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
        }
        keys = [self._key(job.id), self._input_key(job.id), self.all, self.queued]
        pairs = [item for name, value in fields.items() for item in (name, value)]
        arguments = [max_queued or 0, job.id, job.created_at, json.dumps(job_input), *pairs]
        created = self._create(keys=keys, args=arguments)
        if created == 0:
            raise QueueFull
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
        )

    def input(self, job_id: str) -> dict[str, Any] | None:
        return _optional_json(self.db.get(self._input_key(job_id)) or "")

    def recent(self, status: str | None = None, limit: int = 100, client: str | None = None) -> list[Job]:
        """Newest first (only `status` ones and `client`'s when given), a page at a time, each page's
        records fetched in one round trip."""
        jobs: list[Job] = []
        for start in range(0, self.db.zcard(self.all), 256):
            with self.db.pipeline(transaction=False) as pipe:
                for job_id in self.db.zrevrange(self.all, start, start + 255):
                    pipe.hgetall(self._key(job_id))
                rows = pipe.execute()
            for job in map(self._job, rows):
                if job is not None and status in (None, job.status) and client in (None, job.client):
                    jobs.append(job)
                    if len(jobs) == limit:
                        return jobs
        return jobs

    def queued_count(self) -> int:
        return self.db.zcard(self.queued)

    def oldest_queued_at(self) -> float | None:
        """When the longest-waiting queued job was submitted (None: none waits)."""
        oldest = self.db.zrange(self.queued, 0, 0, withscores=True)
        return oldest[0][1] if oldest else None

    def claim(self, owner: str, stale_after_s: float) -> Job | None:
        now = time.time()
        keys = [self.queued, self.running, self.finished]
        job_id = self._claim(keys=keys, args=[now, now - stale_after_s, owner, self.prefix])
        return self.get(job_id) if job_id else None

    def heartbeat(self, job_id: str, owner: str) -> bool:
        keys = [self._key(job_id), self.running]
        return self._heartbeat(keys=keys, args=[time.time(), owner, job_id]) == 1

    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool:
        error = json.dumps(result["error"]) if result.get("error") else ""
        outputs = json.dumps(result.get("outputs", []))
        keys = [self._key(job_id), self._input_key(job_id), self.running, self.finished]
        return self._finish(keys=keys, args=[owner, status, time.time(), error, outputs, job_id]) == 1

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
                pipe.zrem(self.finished, job_id)
                pipe.execute()
            if job is not None:
                expired.append(job)
        return expired

    def cancel(self, job_id: str) -> Job | None:
        keys = [self._key(job_id), self._input_key(job_id), self.queued, self.finished]
        self._cancel(keys=keys, args=[time.time(), job_id])
        return self.get(job_id)
