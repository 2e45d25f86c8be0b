import asyncio
import sqlite3
import time

from leap_ray.api.progress import StepProgress
from leap_ray.serve.jobs.outputs import FolderOutputs
from leap_ray.serve.jobs.runner import JobEvent, JobRunner
from leap_ray.serve.jobs.sqlite_store import SQLiteJobStore
from leap_ray.serve.jobs.store import WebhookSpec


def make_runner(store, tmp_path, run=None, notify=None, **options) -> JobRunner:
    settings = {"max_concurrent": 2, "stale_after_s": 30, "retention_s": 3600, "poll_s": 0.01, **options}
    return JobRunner(store, FolderOutputs(tmp_path / "outputs"), run, notify, **settings)


def test_expiry_removes_finished_jobs_and_their_output_files(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.create("sdxl", {})
    store.claim("r", 30)
    (tmp_path / "outputs" / job.id).mkdir(parents=True)
    (tmp_path / "outputs" / job.id / "0.png").write_bytes(b"png")
    store.finish(job.id, "r", "succeeded")
    make_runner(store, tmp_path, retention_s=1e-9).expire_old_jobs()
    assert store.get(job.id) is None
    assert not (tmp_path / "outputs" / job.id).exists()


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.01)

    return poll()


def test_the_runner_runs_a_job_and_stores_its_outputs_and_last_progress(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    events: list[JobEvent] = []

    async def run(service, job_input, report):
        assert job_input == {"prompt": "a"}
        for step in range(1, 51):  # per-step progress: written with the heartbeat, not 50 times
            report(StepProgress(step, 50, 1000.0 - 20 * step))
        return [(b"bytes", "png", "image/png")]

    async def main():
        runner = make_runner(store, tmp_path, run, events.append)
        job = store.create("sdxl", {"prompt": "a"})
        runner.ensure_started()
        # The completed event is sent after the job is stored as succeeded: wait for both.
        await wait_until(
            lambda: store.get(job.id).status == "succeeded" and any(e.kind == "completed" for e in events)
        )
        return store.get(job.id)

    done = asyncio.run(main())
    assert done.progress == StepProgress(50, 50, 0.0)
    assert (tmp_path / "outputs" / done.id / "0.png").read_bytes() == b"bytes"
    assert [event.kind for event in events] == ["start", "progress", "completed"]
    assert events[1].job.progress == StepProgress(1, 50, 980.0)  # the first step: one a second at most
    assert (events[2].job.status, events[2].job.progress) == ("succeeded", done.progress)
    assert store.input(done.id) is None  # dropped once finished


def test_a_locked_store_neither_stalls_the_loop_nor_loses_the_job(tmp_path):
    """While another process holds the SQLite write lock, the runner's store calls wait on their own
    threads: the event loop keeps running, and the job finishes once the lock is released."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3", timeout_s=0.2)
    job = store.create("sdxl", {"prompt": "a"})

    async def run(service, job_input, report):
        return [(b"x", "png", "image/png")]

    async def main() -> float:
        runner = make_runner(store, tmp_path, run, lambda event: None)
        locker = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        runner.ensure_started()
        longest, last = 0.0, time.monotonic()
        for _ in range(100):  # one second of 10 ms ticks of the loop
            await asyncio.sleep(0.01)
            longest, last = max(longest, time.monotonic() - last), time.monotonic()
        locker.execute("ROLLBACK")
        await wait_until(lambda: store.get(job.id).status == "succeeded")
        return longest

    assert asyncio.run(main()) < 0.15


def test_a_jobs_webhooks_go_in_order_one_at_a_time_dropping_progress_behind_a_slow_target(
    tmp_path, monkeypatch
):
    from leap_ray.config import JobsSettings
    from leap_ray.serve.jobs import service

    sent: list[str] = []
    in_flight = 0

    async def slow_deliver(url, event, payload, **options):
        nonlocal in_flight
        in_flight += 1
        assert in_flight == 1  # never two deliveries of one job at once
        await asyncio.sleep(0.2)
        sent.append(event)
        in_flight -= 1
        return True

    monkeypatch.setattr(service.webhooks, "deliver", slow_deliver)
    settings = JobsSettings(store_path=str(tmp_path / "jobs.sqlite3"), output_dir=str(tmp_path / "out"))
    settings = settings.for_application("test")
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    events = ["start", "progress", "completed"]
    webhook = WebhookSpec(url="http://hooks.example/", events=events, base="")
    job = store.create("sdxl", {}, webhook)

    async def main() -> None:
        jobs = service.Jobs(gateway=None, settings=settings)
        jobs._notify(JobEvent(job, "start"))
        for _ in range(5):
            jobs._notify(JobEvent(job, "progress"))  # the target is still busy with `start`: dropped
        jobs._notify(JobEvent(job, "completed"))
        await wait_until(lambda: len(sent) == 2 and not jobs._deliveries, timeout_s=5)

    asyncio.run(main())
    assert sent == ["start", "completed"]


def test_a_job_cancelled_while_its_image_is_decoded_never_reaches_the_model(tmp_path, monkeypatch):
    """The runner validates a job's input again, on a worker thread. A decode cannot be interrupted
    (it is bounded by the upload limits): a cancel that comes during it ends the job at once, and the
    decode's result is dropped without a model call."""
    import threading

    import numpy as np

    from leap_ray.api.images import UploadedImage
    from leap_ray.config import IngressSettings, JobsSettings
    from leap_ray.serve.jobs.service import Jobs
    from tests.helpers import StubGateway, png

    decoding, release = threading.Event(), threading.Event()
    read_pixels = UploadedImage.pixels

    def slow_pixels(self):
        decoding.set()
        release.wait(10)
        return read_pixels(self)

    monkeypatch.setattr(UploadedImage, "pixels", slow_pixels)
    settings = JobsSettings(store_path=str(tmp_path / "jobs.sqlite3"), output_dir=str(tmp_path / "out"))
    settings = settings.for_application("test")
    gateway = StubGateway(IngressSettings(jobs=settings))

    async def main() -> str:
        jobs = Jobs(gateway, settings)
        job = jobs.store.store.create("sdxl", {"prompt": "a", "image": png(np.zeros((64, 64, 3), np.uint8))})
        jobs.runner.ensure_started()
        assert await asyncio.to_thread(decoding.wait, 10)
        jobs.store.store.cancel(job.id)
        await wait_until(lambda: jobs.store.store.get(job.id).status == "cancelled")
        release.set()
        await asyncio.sleep(0.2)  # the decode ends; nothing is left to take its result
        return jobs.store.store.get(job.id).status

    assert asyncio.run(main()) == "cancelled"
    assert gateway.generated == []


def test_jobs_run_within_the_limits_and_the_next_starts_as_soon_as_one_ends(tmp_path):
    """At most `limits()[service]` jobs of a service run at once, over the claims of every runner;
    a job's end lets the next one start without waiting for the next tick."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    running: list[str] = []
    most_at_once = 0

    async def run(service, job_input, report):
        nonlocal most_at_once
        running.append(service)
        most_at_once = max(most_at_once, running.count("sdxl"))
        await asyncio.sleep(0.05)
        running.remove(service)
        return [(b"x", "png", "image/png")]

    async def limits(busy):
        return {"sdxl": 2, "musicgen": 1}

    async def main() -> float:
        options = {"max_concurrent": 50, "poll_s": 5.0, "limits": limits}
        runner = make_runner(store, tmp_path, run, lambda event: None, **options)
        jobs = [store.create("sdxl", {}) for _ in range(6)]
        started = time.monotonic()
        runner.ensure_started()
        await wait_until(lambda: all(store.get(job.id).status == "succeeded" for job in jobs))
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert most_at_once == 2
    assert elapsed < 2.0  # 3 rounds of 0.05 s; waiting for ticks would take 3 polls of 5 s


def test_the_runner_reads_the_backlog_per_service(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    for service in ("sdxl", "sdxl", "musicgen"):
        store.create(service, {})

    async def limits(busy):
        return {"sdxl": 0, "musicgen": 0}  # nothing may start: all of it stays queued

    async def main() -> dict[str, int]:
        runner = make_runner(store, tmp_path, None, None, limits=limits)
        await runner._tick()
        return runner.backlog

    assert asyncio.run(main()) == {"sdxl": 2, "musicgen": 1}


def test_a_keys_lone_job_starts_at_the_next_free_place_behind_another_keys_backlog(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    started: list[str] = []

    async def run(service, job_input, report):
        started.append(job_input["tenant"])
        await asyncio.sleep(0.02)
        return [(b"x", "png", "image/png")]

    async def limits(busy):
        return {"sdxl": 2}

    async def main() -> None:
        runner = make_runner(store, tmp_path, run, lambda event: None, max_concurrent=50, limits=limits)
        backlog = [store.create("sdxl", {"tenant": "a"}, client="key-a") for _ in range(20)]
        runner.ensure_started()
        await wait_until(lambda: len(started) == 2)
        lone = store.create("sdxl", {"tenant": "b"}, client="key-b")
        await wait_until(lambda: all(store.get(job.id).status == "succeeded" for job in [*backlog, lone]))

    asyncio.run(main())
    assert started.index("b") == 2  # behind the two of key-a's that were running, not its 18 others
