"""Runs jobs inside the ingress: a background loop claims jobs from the store, runs each through the
same path as the synchronous endpoints, writes its outputs to the output store, and keeps a heartbeat so that
another ingress replica takes over the jobs of one that died.

Every store call goes through the StoreClient (off the event loop). Progress is kept in memory and
written with the next heartbeat, so a job's per-step progress costs the store one write per tick."""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from leap_ray.api.jobs import JobEventKind
from leap_ray.api.progress import JobProgress
from leap_ray.errors import StoreUnavailable
from leap_ray.serve import metrics
from leap_ray.serve.errors import as_leap_error
from leap_ray.serve.jobs.outputs import OutputStore
from leap_ray.serve.jobs.store import Job, JobStore
from leap_ray.serve.jobs.store_client import STORE_ERRORS, StoreClient

logger = logging.getLogger("ray.serve")
PROGRESS_EVENT_EVERY_S = 1.0  # progress webhooks: at most this often per job
# Runs (service, input, report progress) and returns the outputs: (encoded bytes, extension, content type).
RunJob = Callable[[str, dict, Callable[[JobProgress], None]], Awaitable[list[tuple[bytes, str, str]]]]


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job: it started, made progress, or ended (whatever its status)."""

    job: Job  # as it was then: a progress event's job carries that progress
    kind: JobEventKind


# Told of a job's events, e.g. to send its webhook; must not block.
Notify = Callable[[JobEvent], None]
# The most jobs of each service to run at once over every runner (None: no bound), e.g. what the model
# deployments' running replicas hold (leap_ray.serve.jobs.capacity); told whether jobs wait or run.
Limits = Callable[[bool], Awaitable[Mapping[str, int] | None]]


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        outputs: OutputStore,
        run: RunJob,
        notify: Notify,
        *,
        max_concurrent: int,
        stale_after_s: float,
        retention_s: float,
        poll_s: float = 0.5,
        expire_every_s: float = 60.0,
        limits: Limits | None = None,
    ) -> None:
        # One thread, no deadline: ticks and ends are recorded one at a time, each awaited to its end,
        # so a slow store delays the runner but never makes two ticks claim at once.
        self.store = StoreClient(store, timeout_s=None, threads=1)
        self.outputs = outputs
        self.run = run
        self.notify = notify
        self.max_concurrent = max_concurrent
        self.stale_after_s = stale_after_s
        self.retention_s = retention_s
        self.poll_s = poll_s
        self.expire_every_s = expire_every_s
        self.limits = limits
        self.backlog: dict[str, int] = {}  # queued jobs per service, as the last tick read them
        self._expired_at = 0.0
        self.owner = uuid.uuid4().hex
        self.tasks: dict[str, asyncio.Task] = {}
        self._progress: dict[str, JobProgress] = {}  # reported since the last heartbeat
        self._cancelled: set[str] = set()  # jobs whose cancellation was asked for (a DELETE)
        self._loop_task: asyncio.Task | None = None
        self._ended = asyncio.Event()  # a job of this runner ended: its place may go to the next one
        self._upkeep: asyncio.Task | None = None

    def ensure_started(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        """Ticks every `poll_s`, and at once when one of its jobs ends (so that its place in the model
        is not left empty until the next tick); heartbeats go with the `poll_s` ticks only."""
        self._ended = asyncio.Event()  # of this loop: a runner restarted on another loop gets its own
        beaten_at = 0.0
        while True:
            beat = time.monotonic() - beaten_at >= self.poll_s
            try:
                await self._tick(beat)
            except StoreUnavailable:
                pass  # logged by the store client; the next tick tries again
            except Exception:
                logger.exception("job runner tick failed")
            if beat:
                beaten_at = time.monotonic()
            self._keep_up()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for may swallow a cancellation that
            # comes as the wait ends, and the loop would outlive its replica's shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._ended.wait()
            self._ended.clear()

    async def _tick(self, beat: bool = True) -> None:
        for job_id in [job_id for job_id, task in self.tasks.items() if task.done()]:
            del self.tasks[job_id]
        progress = {job_id: self._progress.pop(job_id, None) for job_id in self.tasks} if beat else {}
        free = self.max_concurrent - len(self.tasks)
        busy = bool(self.backlog or self.tasks)
        limits = await self.limits(busy) if self.limits is not None else None
        stop, claimed = await self.store.call(self._beat_and_claim, progress, free, limits)
        for job_id in stop:
            self._cancelled.add(job_id)
            self.tasks[job_id].cancel()
        for job, job_input in claimed:
            self.tasks[job.id] = asyncio.get_running_loop().create_task(self._execute(job, job_input))

    def _keep_up(self) -> None:
        """Starts the store's upkeep when due (expiry, repair), on a thread of its own: deleting many
        outputs from a slow bucket must never hold up the heartbeats, or another runner would take
        the running jobs over and run them again."""
        due = time.time() - self._expired_at > self.expire_every_s
        if due and (self._upkeep is None or self._upkeep.done()):
            self._expired_at = time.time()
            self._upkeep = asyncio.get_running_loop().create_task(asyncio.to_thread(self._upkeep_store))

    def _upkeep_store(self) -> None:
        try:
            self.expire_old_jobs()
            self.store.store.repair()
        except STORE_ERRORS as error:
            logger.warning("job store upkeep failed (%s: %s)", type(error).__name__, error)

    def _beat_and_claim(
        self, progress: dict[str, JobProgress | None], free: int, limits: Mapping[str, int] | None
    ) -> tuple[list[str], list[tuple[Job, dict | None]]]:
        """One tick's store work, on the store's thread: heartbeats (with the latest progress) of
        running jobs, claims (within `limits`), the backlog. Returns the jobs to stop (cancelled) and
        those claimed (a store error after a claim keeps the claims made)."""
        store = self.store.store
        stop = []
        for job_id, latest in progress.items():
            if latest is not None:
                store.set_progress(job_id, self.owner, latest)
            if not store.heartbeat(job_id, self.owner):  # cancel requested
                stop.append(job_id)
        claimed = []
        try:
            while len(claimed) < free and (job := store.claim(self.owner, self.stale_after_s, limits)):
                claimed.append((job, store.input(job.id)))  # a job whose input failed: taken over later
            self.backlog = store.queued_by_service()
            oldest = store.oldest_queued_at()
            metrics.oldest_queued_job_seconds().set(0.0 if oldest is None else time.time() - oldest)
        except STORE_ERRORS as error:
            logger.warning("the job store failed mid-tick (%s: %s)", type(error).__name__, error)
        return stop, claimed

    def expire_old_jobs(self) -> None:
        """Deletes finished jobs past their retention, with their outputs (blocking)."""
        for job in self.store.store.expire(time.time() - self.retention_s):
            try:
                self.outputs.delete(job.id)
            except StoreUnavailable as error:  # the record is gone: the next jobs' outputs still go
                logger.warning("outputs of expired job %s not deleted: %s", job.id, error.message)

    async def _execute(self, job: Job, job_input: dict | None) -> None:
        self.notify(JobEvent(job, "start"))
        last_event = 0.0

        def report(progress: JobProgress) -> None:
            nonlocal last_event
            self._progress[job.id] = progress
            if time.monotonic() - last_event >= PROGRESS_EVENT_EVERY_S:
                last_event = time.monotonic()
                self.notify(JobEvent(replace(job, progress=progress), "progress"))

        try:
            if job_input is None:
                raise StoreUnavailable("the job's input is no longer in the store")
            outputs = await self.run(job.service, job_input, report)
            files = await asyncio.to_thread(self.outputs.write, job.id, outputs)
            await self._finish(job.id, "succeeded", outputs=files)
        except asyncio.CancelledError:
            if job.id not in self._cancelled:
                raise  # the replica is stopping: the job is left to be taken over, not ended
            await self._finish(job.id, "cancelled")  # a DELETE: the model call was cancelled too
        except Exception as error:
            await self._finish(job.id, "failed", error=as_leap_error(error).body()["error"])

    async def _finish(self, job_id: str, status: str, **result: Any) -> None:
        """Records the end (with the last progress) and sends `completed`. A store that is down is
        tried again until the job would be taken over anyway: its model work is not to be redone."""
        progress = self._progress.pop(job_id, None)
        deadline = time.monotonic() + self.stale_after_s
        while True:
            try:
                job = await self.store.call(self._record_end, job_id, status, progress, result)
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    logger.error("job %s ended %s but the store could not record it", job_id, status)
                    return
                await asyncio.sleep(self.poll_s)
        self._cancelled.discard(job_id)
        self._ended.set()
        if job is not None:
            self.notify(JobEvent(job, "completed"))

    def _record_end(
        self, job_id: str, status: str, progress: JobProgress | None, result: dict[str, Any]
    ) -> Job | None:
        """The finished job, or None when it was no longer ours to end (another runner took it over)."""
        store = self.store.store
        if progress is not None:
            store.set_progress(job_id, self.owner, progress)
        if not store.finish(job_id, self.owner, status, **result):
            return None
        metrics.jobs().inc(tags={"status": status})
        return store.get(job_id)
