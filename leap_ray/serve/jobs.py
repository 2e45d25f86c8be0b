"""Runs jobs inside the ingress: a background loop claims jobs from the store, runs each through the
same path as the synchronous endpoints, writes its outputs to files, and keeps a heartbeat so that
another ingress replica takes over the jobs of one that died."""

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from leap_ray.jobs.store import Job, JobStore
from leap_ray.serve.errors import as_leap_error

logger = logging.getLogger("ray.serve")
PROGRESS_EVENT_EVERY_S = 1.0  # progress webhooks: at most this often per job
# Runs (service, input, report progress) and returns the outputs: (encoded bytes, extension, content type).
RunJob = Callable[[str, dict, Callable[[dict], None]], Awaitable[list[tuple[bytes, str, str]]]]
# Told of a job's events ("start", "completed"), e.g. to send its webhook; must not block.
Notify = Callable[[Job, str], None]


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        output_dir: Path,
        run: RunJob,
        notify: Notify,
        *,
        max_concurrent: int,
        stale_after_s: float,
        retention_s: float,
        poll_s: float = 0.5,
        expire_every_s: float = 60.0,
    ) -> None:
        self.store = store
        self.output_dir = output_dir
        self.run = run
        self.notify = notify
        self.max_concurrent = max_concurrent
        self.stale_after_s = stale_after_s
        self.retention_s = retention_s
        self.poll_s = poll_s
        self.expire_every_s = expire_every_s
        self._expired_at = 0.0
        self.owner = uuid.uuid4().hex
        self.tasks: dict[str, asyncio.Task] = {}
        self._loop_task: asyncio.Task | None = None

    def ensure_started(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:
                logger.exception("job runner tick failed")
            await asyncio.sleep(self.poll_s)

    def expire_old_jobs(self) -> None:
        """Deletes finished jobs past their retention, with their output files."""
        self._expired_at = time.time()
        for job in self.store.expire(self._expired_at - self.retention_s):
            shutil.rmtree(self.output_dir / job.id, ignore_errors=True)

    def _tick(self) -> None:
        if time.time() - self._expired_at > self.expire_every_s:
            self.expire_old_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
            elif not self.store.heartbeat(job_id, self.owner):  # cancel requested
                task.cancel()
        while len(self.tasks) < self.max_concurrent:
            job = self.store.claim(self.owner, self.stale_after_s)
            if job is None:
                break
            self.tasks[job.id] = asyncio.get_running_loop().create_task(self._execute(job))

    async def _execute(self, job: Job) -> None:
        self.notify(job, "start")
        last_progress_event = 0.0

        def report(progress: dict) -> None:
            nonlocal last_progress_event
            self.store.set_progress(job.id, self.owner, progress)
            if time.monotonic() - last_progress_event >= PROGRESS_EVENT_EVERY_S:
                last_progress_event = time.monotonic()
                self.notify(replace(job, progress=progress), "progress")

        try:
            outputs = await self.run(job.service, job.input, report)
            folder = self.output_dir / job.id
            folder.mkdir(parents=True, exist_ok=True)
            files = []
            for index, (data, extension, content_type) in enumerate(outputs):
                path = folder / f"{index}.{extension}"
                await asyncio.to_thread(path.write_bytes, data)
                files.append({"path": str(path), "content_type": content_type})
            self.store.finish(job.id, self.owner, "succeeded", outputs=files)
        except asyncio.CancelledError:  # a DELETE: the model call was cancelled with this task
            self.store.finish(job.id, self.owner, "cancelled")
        except Exception as error:
            self.store.finish(job.id, self.owner, "failed", error=as_leap_error(error).body()["error"])
        finally:
            self.notify(self.store.get(job.id) or job, "completed")
