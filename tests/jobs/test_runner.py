import asyncio

from leap_ray.jobs.store import SQLiteJobStore
from leap_ray.serve.jobs import JobRunner


def test_expiry_removes_finished_jobs_and_their_output_files(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.create("sdxl", {})
    store.claim("r", 30)
    (tmp_path / "outputs" / job.id).mkdir(parents=True)
    (tmp_path / "outputs" / job.id / "0.png").write_bytes(b"png")
    store.finish(job.id, "r", "succeeded")
    runner = JobRunner(
        store,
        tmp_path / "outputs",
        run=None,
        notify=None,
        max_concurrent=1,
        stale_after_s=30,
        retention_s=1e-9,
    )
    runner.expire_old_jobs()
    assert store.get(job.id) is None
    assert not (tmp_path / "outputs" / job.id).exists()


def test_the_runner_runs_a_job_and_stores_its_outputs_and_progress(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    events = []

    async def run(service, job_input, report):
        report({"step": 1, "total": 1})
        return [(b"bytes", "png", "image/png")]

    async def main():
        runner = JobRunner(
            store,
            tmp_path / "outputs",
            run,
            lambda job, event: events.append(event),
            max_concurrent=2,
            stale_after_s=30,
            retention_s=3600,
            poll_s=0.01,
        )
        job = store.create("sdxl", {"prompt": "a"})
        runner.ensure_started()
        for _ in range(200):
            if store.get(job.id).status == "succeeded":
                break
            await asyncio.sleep(0.01)
        return store.get(job.id)

    done = asyncio.run(main())
    assert done.status == "succeeded" and done.progress == {"step": 1, "total": 1}
    assert (tmp_path / "outputs" / done.id / "0.png").read_bytes() == b"bytes"
    assert events == ["start", "progress", "completed"]
