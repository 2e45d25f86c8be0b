"""The job store on Redis, for ingress replicas on many nodes. Same behaviour as the SQLite store:
a job is a hash, a sorted set orders them by creation, and the state changes that must be atomic
(claim, heartbeat, finish, cancel) are Lua scripts, which Redis runs one at a time."""

import json
import time
import uuid
from typing import Any

import redis

from leap_ray.jobs.store import FINISHED, Job

_CLAIM = """
local now, stale_before, owner, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = prefix .. id
  local status = redis.call('HGET', key, 'status')
  local cancel = redis.call('HGET', key, 'cancel_requested')
  local silent = status == 'running' and tonumber(redis.call('HGET', key, 'heartbeat_at')) < stale_before
  if silent and cancel == '1' then
    redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now)
  elseif cancel ~= '1' and (status == 'queued' or silent) then
    redis.call('HSET', key, 'status', 'running', 'owner', owner, 'heartbeat_at', now)
    if redis.call('HGET', key, 'started_at') == '' then redis.call('HSET', key, 'started_at', now) end
    return id
  end
end
return false
"""
_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[2] and redis.call('HGET', KEYS[1], 'status') == 'running'
   and redis.call('HGET', KEYS[1], 'cancel_requested') == '0' then
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1])
  return 1
end
return 0
"""
_FINISH = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3], 'error', ARGV[4], 'outputs', ARGV[5])
  return 1
end
return 0
"""
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'cancel_requested', '1')
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
    def __init__(self, url: str, prefix: str = "leap_ray:") -> None:
        self.db = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix + "job:"
        self.index = prefix + "jobs"
        self._claim = self.db.register_script(_CLAIM)
        self._heartbeat = self.db.register_script(_HEARTBEAT)
        self._finish = self.db.register_script(_FINISH)
        self._cancel = self.db.register_script(_CANCEL)

    def _key(self, job_id: str) -> str:
        return self.prefix + job_id

    def create(self, service: str, job_input: dict[str, Any], webhook: dict[str, Any] | None = None) -> Job:
        job = Job(uuid.uuid4().hex, service, "queued", job_input, created_at=time.time(), webhook=webhook)
        fields = {
            "id": job.id,
            "service": service,
            "status": "queued",
            "input": json.dumps(job_input),
            "created_at": job.created_at,
            "started_at": "",
            "finished_at": "",
            "error": "",
            "outputs": "[]",
            "cancel_requested": "0",
            "owner": "",
            "heartbeat_at": 0,
            "webhook": json.dumps(webhook) if webhook else "",
            "progress": "",
        }
        with self.db.pipeline() as pipe:
            pipe.hset(self._key(job.id), mapping=fields)
            pipe.zadd(self.index, {job.id: job.created_at})
            pipe.execute()
        return job

    def get(self, job_id: str) -> Job | None:
        row = self.db.hgetall(self._key(job_id))
        if not row:
            return None
        return Job(
            id=row["id"],
            service=row["service"],
            status=row["status"],
            input=json.loads(row["input"]),
            created_at=float(row["created_at"]),
            started_at=_optional_float(row["started_at"]),
            finished_at=_optional_float(row["finished_at"]),
            error=_optional_json(row["error"]),
            outputs=json.loads(row["outputs"]),
            cancel_requested=row["cancel_requested"] == "1",
            webhook=_optional_json(row["webhook"]),
            progress=_optional_json(row["progress"]),
        )

    def recent(self, status: str | None = None, limit: int = 100) -> list[Job]:
        jobs = []
        for job_id in self.db.zrevrange(self.index, 0, -1):
            job = self.get(job_id)
            if job is not None and (status is None or job.status == status):
                jobs.append(job)
                if len(jobs) == limit:
                    break
        return jobs

    def claim(self, owner: str, stale_after_s: float) -> Job | None:
        now = time.time()
        job_id = self._claim(keys=[self.index], args=[now, now - stale_after_s, owner, self.prefix])
        return self.get(job_id) if job_id else None

    def heartbeat(self, job_id: str, owner: str) -> bool:
        return self._heartbeat(keys=[self._key(job_id)], args=[time.time(), owner]) == 1

    def finish(self, job_id: str, owner: str, status: str, **result: Any) -> bool:
        error = json.dumps(result["error"]) if result.get("error") else ""
        outputs = json.dumps(result.get("outputs", []))
        return self._finish(keys=[self._key(job_id)], args=[owner, status, time.time(), error, outputs]) == 1

    def set_progress(self, job_id: str, owner: str, progress: dict[str, Any]) -> None:
        if self.db.hget(self._key(job_id), "owner") == owner:
            self.db.hset(self._key(job_id), "progress", json.dumps(progress))

    def expire(self, finished_before: float) -> list[Job]:
        expired = []
        for job_id in self.db.zrange(self.index, 0, -1):
            job = self.get(job_id)
            if job and job.status in FINISHED and job.finished_at and job.finished_at < finished_before:
                with self.db.pipeline() as pipe:
                    pipe.delete(self._key(job_id))
                    pipe.zrem(self.index, job_id)
                    pipe.execute()
                expired.append(job)
        return expired

    def cancel(self, job_id: str) -> Job | None:
        self._cancel(keys=[self._key(job_id)], args=[time.time()])
        return self.get(job_id)
