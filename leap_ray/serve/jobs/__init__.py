"""Jobs: routes, the runner that executes them inside the ingress, webhooks, and the stores that keep
them (SQLite for one machine, Redis for a cluster)."""

from pathlib import Path

from leap_ray.config import JobsSettings
from leap_ray.serve.jobs.sqlite_store import SQLiteJobStore
from leap_ray.serve.jobs.store import JobStore


def open_store(settings: JobsSettings) -> JobStore:
    """The store the settings name; their per-application defaults filled in (`for_application`)."""
    if settings.store == "redis":
        from leap_ray.serve.jobs.redis_store import RedisJobStore

        return RedisJobStore(
            settings.redis_url, prefix=settings.redis_prefix, timeout_s=settings.store_timeout_s
        )
    return SQLiteJobStore(Path(settings.store_path).expanduser(), timeout_s=settings.store_timeout_s)
