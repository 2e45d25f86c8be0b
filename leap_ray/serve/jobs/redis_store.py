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
from leap_ray.serve.jobs.store import (
    ClientQueueFull,
    Job,
    QueueFull,
    WebhookSpec,
    progress_record,
    read_progress,
    read_webhook,
)

# Keys the scripts build from the prefix (ARGV): a job's hash 'job:<id>' and input 'input:<id>'; the
# queued ones of a service 'queued:<service>' and of a service and client 'queued:<service>:<client>',
# a client's queued ones 'client-queued:<client>' and all its jobs 'client-jobs:<client>'; the clients
# with queued jobs by turn 'turns', the services ever queued 'services', running jobs per service
# 'running-count'. Scripts that build keys run on one Redis (not a Redis Cluster).
_KEYS = """
local function queued_of(prefix, service, client) return prefix .. 'queued:' .. service .. ':' .. client end
local function unqueue(prefix, id, service, client)
  redis.call('ZREM', prefix .. 'queued', id)
  redis.call('ZREM', prefix .. 'queued:' .. service, id)
  redis.call('ZREM', queued_of(prefix, service, client), id)
  redis.call('ZREM', prefix .. 'client-queued:' .. client, id)
end
local function stop_running(prefix, id, service)
  redis.call('ZREM', prefix .. 'running', id)
  if redis.call('HINCRBY', prefix .. 'running-count', service, -1) < 0 then
    redis.call('HSET', prefix .. 'running-count', service, 0)
  end
end
"""
# ARGV: now, stale_before, owner, prefix, then (service, most running) pairs.
_CLAIM = (
    _KEYS
    + """
local now, stale_before, owner, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local running, turns = prefix .. 'running', prefix .. 'turns'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', stale_before)) do
  local key = prefix .. 'job:' .. id
  if redis.call('HGET', key, 'cancel_requested') == '1' then
    stop_running(prefix, id, redis.call('HGET', key, 'service'))
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now)
    redis.call('DEL', prefix .. 'input:' .. id)
    redis.call('ZADD', prefix .. 'finished', now, id)
  else
    redis.call('HSET', key, 'owner', owner, 'heartbeat_at', now)
    redis.call('ZADD', running, now, id)
    return id
  end
end
local full = {}
for i = 5, #ARGV, 2 do
  if tonumber(redis.call('HGET', prefix .. 'running-count', ARGV[i]) or '0') >= tonumber(ARGV[i + 1]) then
    full[ARGV[i]] = true
  end
end
local services = redis.call('SMEMBERS', prefix .. 'services')
local function head_of(client)
  local chosen, oldest, chosen_service, waiting = nil, nil, nil, false
  for _, service in ipairs(services) do
    local head = redis.call('ZRANGE', queued_of(prefix, service, client), 0, 0, 'WITHSCORES')
    if head[1] then
      waiting = true
      if not full[service] and (oldest == nil or tonumber(head[2]) < oldest) then
        chosen, oldest, chosen_service = head[1], tonumber(head[2]), service
      end
    end
  end
  return chosen, chosen_service, waiting
end
for _, client in ipairs(redis.call('ZRANGE', turns, 0, -1)) do
  local chosen, chosen_service, waiting = head_of(client)
  -- An entry whose job is no longer queued: an older release claimed or cancelled it.
  while chosen and redis.call('HGET', prefix .. 'job:' .. chosen, 'status') ~= 'queued' do
    unqueue(prefix, chosen, chosen_service, client)
    chosen, chosen_service, waiting = head_of(client)
  end
  if chosen then
    local last = redis.call('ZRANGE', turns, -1, -1, 'WITHSCORES')
    redis.call('ZADD', turns, tonumber(last[2]) + 1, client)
    unqueue(prefix, chosen, chosen_service, client)
    local key = prefix .. 'job:' .. chosen
    redis.call('HSET', key, 'status', 'running', 'owner', owner, 'heartbeat_at', now)
    if redis.call('HGET', key, 'started_at') == '' then redis.call('HSET', key, 'started_at', now) end
    redis.call('ZADD', running, now, chosen)
    redis.call('HINCRBY', prefix .. 'running-count', chosen_service, 1)
    return chosen
  end
  if not waiting then redis.call('ZREM', turns, client) end
end
return false
"""
)
# KEYS: job, input. ARGV: prefix, max queued, max queued per client (0: no bound), id, created_at,
# service, client, input, then the job's fields as name, value pairs. Returns 1 (created), 2 (the id
# exists already), 0 (the queue is full) or 3 (the client's queue is full).
_CREATE = (
    _KEYS
    + """
local prefix, id, created_at, service, client = ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if tonumber(ARGV[2]) > 0 and redis.call('ZCARD', prefix .. 'queued') >= tonumber(ARGV[2]) then return 0 end
local client_queued = redis.call('ZCARD', prefix .. 'client-queued:' .. client)
if tonumber(ARGV[3]) > 0 and client_queued >= tonumber(ARGV[3]) then return 3 end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('SET', KEYS[2], ARGV[8])
redis.call('ZADD', prefix .. 'jobs', created_at, id)
redis.call('ZADD', prefix .. 'client-jobs:' .. client, created_at, id)
redis.call('ZADD', prefix .. 'queued', created_at, id)
redis.call('ZADD', prefix .. 'queued:' .. service, created_at, id)
redis.call('ZADD', queued_of(prefix, service, client), created_at, id)
redis.call('ZADD', prefix .. 'client-queued:' .. client, created_at, id)
redis.call('ZADD', prefix .. 'turns', 'NX', 0, client)
redis.call('SADD', prefix .. 'services', service)
return 1
"""
)
# Data written before the per-client and per-service sets: indexed into them once. ARGV: prefix.
_INDEX_OLDER_JOBS = """
local prefix = ARGV[1]
if redis.call('GET', prefix .. 'layout') == '2' then return 0 end
local jobs = redis.call('ZRANGE', prefix .. 'jobs', 0, -1, 'WITHSCORES')
for i = 1, #jobs, 2 do
  local id, created_at = jobs[i], jobs[i + 1]
  local key = prefix .. 'job:' .. id
  local service, client = redis.call('HGET', key, 'service'), redis.call('HGET', key, 'client') or ''
  local status = redis.call('HGET', key, 'status')
  redis.call('ZADD', prefix .. 'client-jobs:' .. client, created_at, id)
  if status == 'queued' then
    redis.call('ZADD', prefix .. 'queued:' .. service, created_at, id)
    redis.call('ZADD', prefix .. 'queued:' .. service .. ':' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'client-queued:' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'turns', 'NX', 0, client)
    redis.call('SADD', prefix .. 'services', service)
  elseif status == 'running' then
    redis.call('HINCRBY', prefix .. 'running-count', service, 1)
  end
end
redis.call('SET', prefix .. 'layout', '2')
return 1
"""
# Brings the per-service and per-client sets and the running counts in step with the jobs, for what
# another release's replicas did to the same Redis during a rolling upgrade (they keep the global sets
# only). Runs when a store opens and with each expiry. ARGV: prefix.
_REPAIR = (
    _KEYS
    + """
local prefix = ARGV[1]
for _, id in ipairs(redis.call('ZRANGE', prefix .. 'queued', 0, -1)) do
  local key = prefix .. 'job:' .. id
  local service, client = redis.call('HGET', key, 'service'), redis.call('HGET', key, 'client') or ''
  if redis.call('HGET', key, 'status') ~= 'queued' then
    if service then unqueue(prefix, id, service, client) else redis.call('ZREM', prefix .. 'queued', id) end
  else
    local created_at = redis.call('HGET', key, 'created_at')
    redis.call('ZADD', prefix .. 'queued:' .. service, created_at, id)
    redis.call('ZADD', queued_of(prefix, service, client), created_at, id)
    redis.call('ZADD', prefix .. 'client-queued:' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'client-jobs:' .. client, created_at, id)
    redis.call('ZADD', prefix .. 'turns', 'NX', 0, client)
    redis.call('SADD', prefix .. 'services', service)
  end
end
redis.call('DEL', prefix .. 'running-count')
for _, id in ipairs(redis.call('ZRANGE', prefix .. 'running', 0, -1)) do
  local service = redis.call('HGET', prefix .. 'job:' .. id, 'service')
  if service then redis.call('HINCRBY', prefix .. 'running-count', service, 1) end
end
return 1
"""
)
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
# KEYS: job, input, finished. ARGV: owner, status, now, error, outputs, id, prefix.
_FINISH = (
    _KEYS
    + """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'outputs', ARGV[5])
  redis.call('DEL', KEYS[2])
  stop_running(ARGV[7], ARGV[6], redis.call('HGET', KEYS[1], 'service'))
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
  return 1
end
return 0
"""
)
# KEYS: job, input, finished. ARGV: now, id, prefix.
_CANCEL = (
    _KEYS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'cancel_requested', '1')
  redis.call('DEL', KEYS[2])
  unqueue(ARGV[3], ARGV[2], redis.call('HGET', KEYS[1], 'service'), redis.call('HGET', KEYS[1], 'client'))
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return status
"""
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
        self._create = self.db.register_script(_CREATE)
        self._claim = self.db.register_script(_CLAIM)
        self._heartbeat = self.db.register_script(_HEARTBEAT)
        self._finish = self.db.register_script(_FINISH)
        self._cancel = self.db.register_script(_CANCEL)
        self.db.register_script(_INDEX_OLDER_JOBS)(keys=[], args=[prefix])
        self._repair = self.db.register_script(_REPAIR)
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
    ) -> Job:
        """A new queued job; raises QueueFull when `max_queued` wait already, ClientQueueFull when
        `max_queued_per_client` of this client's do (both checked atomically).
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
