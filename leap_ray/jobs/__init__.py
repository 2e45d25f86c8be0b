"""Job records: one small interface (`JobStore`), on SQLite for one machine or Redis for a cluster."""

from pathlib import Path

from leap_ray.config import JobsSettings
from leap_ray.jobs.store import JobStore, SQLiteJobStore


def open_store(settings: JobsSettings) -> JobStore:
    if settings.store == "redis":
        from leap_ray.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url)
    return SQLiteJobStore(Path(settings.store_path).expanduser())
