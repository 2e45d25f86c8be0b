"""Both job stores behave the same: SQLite (one machine) and Redis (a real redis-server)."""

import sqlite3
import time
import uuid
from collections.abc import Callable

import pytest

from leap_ray.api.progress import AudioProgress, StepProgress
from leap_ray.serve.jobs.redis_store import RedisJobStore
from leap_ray.serve.jobs.sqlite_store import SQLiteJobStore
from leap_ray.serve.jobs.store import ClientQueueFull, JobStore, QueueFull, WebhookSpec


@pytest.fixture(params=["sqlite", "redis"])
def reopen(request, tmp_path) -> Callable[[], JobStore]:
    """Opens the store under test anew on the same data."""
    if request.param == "sqlite":
        return lambda: SQLiteJobStore(tmp_path / "jobs.sqlite3")
    url, prefix = request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex}:"
    return lambda: RedisJobStore(url, prefix=prefix)


@pytest.fixture
def store(reopen) -> JobStore:
    return reopen()


def test_a_job_is_queued_then_claimed_by_one_runner_only(store):
    job = store.create("sdxl", {"prompt": "a", "seed": 1})
    assert store.get(job.id).status == "queued"
    claimed = store.claim("runner-a", stale_after_s=30)
    assert (claimed.id, claimed.status) == (job.id, "running")
    assert store.input(job.id) == {"prompt": "a", "seed": 1}
    assert claimed.started_at is not None
    assert store.claim("runner-b", stale_after_s=30) is None


def test_jobs_are_claimed_oldest_first(store):
    first, second = store.create("sdxl", {}), store.create("musicgen", {})
    assert [store.claim("r", 30).id, store.claim("r", 30).id] == [first.id, second.id]


def test_a_silent_runners_job_is_taken_over(store):
    job = store.create("sdxl", {})
    store.claim("dead-runner", stale_after_s=30)
    time.sleep(0.05)
    assert store.claim("live-runner", stale_after_s=0.01).id == job.id
    assert not store.heartbeat(job.id, "dead-runner")  # the old owner may not finish it any more
    assert not store.finish(job.id, "dead-runner", "succeeded")
    assert store.finish(
        job.id, "live-runner", "succeeded", outputs=[{"path": "p", "content_type": "image/png"}]
    )
    assert store.get(job.id).outputs == [{"path": "p", "content_type": "image/png"}]


def test_cancelling_a_queued_job_ends_it_at_once(store):
    job = store.create("sdxl", {})
    assert store.cancel(job.id).status == "cancelled"
    assert store.claim("r", 30) is None


def test_cancelling_a_running_job_tells_its_runner(store):
    job = store.create("sdxl", {})
    store.claim("r", 30)
    assert store.heartbeat(job.id, "r")
    cancelled = store.cancel(job.id)
    assert (cancelled.status, cancelled.cancel_requested) == ("running", True)
    assert not store.heartbeat(job.id, "r")
    assert store.finish(job.id, "r", "cancelled")
    assert store.get(job.id).status == "cancelled"


def test_a_job_cancelled_while_its_runner_died_ends_cancelled(store):
    job = store.create("sdxl", {})
    store.claim("dead", 30)
    store.cancel(job.id)
    time.sleep(0.05)
    assert store.claim("other", stale_after_s=0.01) is None
    assert store.get(job.id).status == "cancelled"


def test_failures_keep_the_error_and_listing_filters_by_status(store):
    failing, waiting = store.create("sdxl", {}), store.create("sdxl", {})
    store.claim("r", 30)
    error = {"message": "boom", "type": "internal_error", "param": None, "code": None}
    store.finish(failing.id, "r", "failed", error=error)
    assert store.get(failing.id).error == error
    assert [job.id for job in store.recent("failed")] == [failing.id]
    assert [job.id for job in store.recent()] == [waiting.id, failing.id]


def test_jobs_survive_a_new_store_on_the_same_data(store, reopen):
    webhook = WebhookSpec(url="http://x", events=["start", "completed"], format="prediction", base="http://h")
    job = store.create("musicgen", {"prompt": "a"}, webhook=webhook)
    again = reopen()
    assert again.input(job.id) == {"prompt": "a"}
    assert (again.get(job.id).webhook, again.get(job.id).status) == (webhook, "queued")
    assert again.get(store.create("sdxl", {}).id).webhook is None


def test_progress_is_kept_for_the_owner_only(store):
    job = store.create("sdxl", {})
    store.claim("r", 30)
    store.set_progress(job.id, "someone-else", StepProgress(9, 9, 1.0))
    store.set_progress(job.id, "r", StepProgress(1, 2, 999.0))
    assert store.get(job.id).progress == StepProgress(1, 2, 999.0)


@pytest.mark.parametrize(
    "progress",
    [StepProgress(1, 2, 999.0), StepProgress(3, 4, 250.0, stage="refiner"), AudioProgress(2.0, 5.0)],
    ids=["sdxl", "sdxl-refiner-stage", "musicgen"],
)
def test_progress_is_read_back_as_the_event_it_was(store, progress):
    job = store.create("sdxl", {})
    store.claim("r", 30)
    store.set_progress(job.id, "r", progress)
    assert store.get(job.id).progress == progress


def test_finished_jobs_expire_and_unfinished_ones_stay(store):
    old, recent, running = store.create("sdxl", {}), store.create("sdxl", {}), store.create("sdxl", {})
    for _ in range(3):
        store.claim("r", 30)
    store.finish(old.id, "r", "succeeded")
    time.sleep(0.05)
    cutoff = time.time()
    store.finish(recent.id, "r", "failed")
    assert [job.id for job in store.expire(cutoff)] == [old.id]
    assert store.get(old.id) is None
    assert {job.id for job in store.recent()} == {recent.id, running.id}


def test_queued_jobs_are_counted(store):
    jobs = [store.create("sdxl", {}) for _ in range(3)]
    store.claim("r", 30)
    store.cancel(jobs[2].id)
    assert store.queued_by_service() == {"sdxl": 1}


def test_a_full_queue_refuses_new_jobs_and_frees_up_as_they_run(store):
    first, _ = store.create("sdxl", {}, max_queued=2), store.create("sdxl", {}, max_queued=2)
    with pytest.raises(QueueFull):
        store.create("sdxl", {}, max_queued=2)
    assert store.claim("r", 30).id == first.id
    store.create("sdxl", {}, max_queued=2)
    assert store.queued_by_service() == {"sdxl": 2}


def test_a_job_cancelled_while_its_runner_died_drops_its_input(store):
    job = store.create("sdxl", {"prompt": "x"})
    store.claim("dead", 30)
    store.cancel(job.id)
    time.sleep(0.05)
    store.claim("other", stale_after_s=0.01)
    assert store.input(job.id) is None


def test_an_input_is_kept_apart_and_dropped_once_its_job_ends(store):
    melody = "x" * 1_000_000
    done, cancelled = (
        store.create("musicgen", {"melody": melody}),
        store.create("musicgen", {"melody": melody}),
    )
    store.claim("r", 30)
    assert store.input(done.id)["melody"] == melody
    store.finish(done.id, "r", "succeeded")
    store.cancel(cancelled.id)
    assert store.input(done.id) is None and store.input(cancelled.id) is None
    assert store.get(done.id).status == "succeeded"  # the record stays for its retention


def test_listing_and_polling_never_load_inputs(store, monkeypatch):
    job = store.create("musicgen", {"melody": "x" * 1000})
    monkeypatch.setattr(store, "input", lambda job_id: pytest.fail("an input was read"))
    assert store.get(job.id).id == job.id
    assert [j.id for j in store.recent()] == [job.id]
    assert not hasattr(store.get(job.id), "input")  # only its summary:
    assert store.get(job.id).input_summary == {"melody": "<1000 characters>"}


def test_a_job_created_again_with_the_id_the_client_chose_is_the_same_job(store):
    first = store.create("sdxl", {"prompt": "a", "seed": 1}, job_id="client-chosen-1")
    store.claim("r", 30)
    again = store.create("musicgen", {"prompt": "b"}, job_id="client-chosen-1", max_queued=0)
    assert (again.id, again.service, again.status) == (first.id, "sdxl", "running")
    assert store.input(first.id) == {"prompt": "a", "seed": 1}
    assert [job.public_id for job in store.recent()] == ["client-chosen-1"]


def test_two_clients_that_choose_the_same_id_get_a_job_each(store):
    # Found by hostile testing: a PUT /predictions/{id} told one key that another key's id existed.
    mine = store.create("sdxl", {"prompt": "a"}, job_id="same-id", client="key-a")
    theirs = store.create("musicgen", {"prompt": "b"}, job_id="same-id", client="key-b")
    assert mine.id != theirs.id and mine.public_id == theirs.public_id == "same-id"
    assert (store.get(mine.id).service, store.get(theirs.id).service) == ("sdxl", "musicgen")
    assert (store.input(mine.id), store.input(theirs.id)) == ({"prompt": "a"}, {"prompt": "b"})
    assert store.create("sdxl", {}, job_id="same-id", client="key-b").id == theirs.id  # idempotent
    generated = store.create("sdxl", {}, client="key-a")
    assert store.create("sdxl", {}, job_id=generated.id, client="key-b").id != generated.id


def test_the_oldest_queued_job_is_known(store):
    assert store.oldest_queued_at() is None
    first = store.create("sdxl", {})
    store.create("sdxl", {})
    assert store.oldest_queued_at() == pytest.approx(first.created_at)
    store.claim("r", 30)
    assert store.oldest_queued_at() > first.created_at


def test_recent_jobs_of_one_client_and_of_all(store):
    mine, theirs = store.create("sdxl", {}, client="key-a"), store.create("sdxl", {}, client="key-b")
    assert [job.id for job in store.recent(client="key-a")] == [mine.id]
    assert {job.id for job in store.recent()} == {mine.id, theirs.id}
    assert store.get(theirs.id).client == "key-b"


def test_a_job_keeps_the_seed_it_was_submitted_with(store):
    job = store.create("sdxl", {"prompt": "a", "seed": 7})
    store.claim("r", 30)
    store.finish(job.id, "r", "succeeded", outputs=[])
    assert (store.get(job.id).seed, store.input(job.id)) == (7, None)  # the input is gone, the seed kept
    assert store.create("musicgen", {"prompt": "b"}).seed is None


def test_a_jobs_record_keeps_its_input_with_tensors_and_audio_summarised(store):
    melody, embeds = "A" * 5000, {"data": "B" * 300, "shape": [1, 77, 2048], "dtype": "float16"}
    job = store.create("musicgen", {"prompt": "a", "seed": 3, "melody": melody, "prompt_embeds": embeds})
    expected = {
        "prompt": "a",
        "seed": 3,
        "melody": "<5000 characters>",
        "prompt_embeds": {"data": "<300 characters>", "shape": [1, 77, 2048], "dtype": "float16"},
    }
    assert job.input_summary == store.get(job.id).input_summary == expected


def test_a_sqlite_file_from_before_jobs_had_owners_opens_with_its_jobs_ownerless(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE job_records (id TEXT PRIMARY KEY, service TEXT NOT NULL, status TEXT NOT NULL, "
            "created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT, outputs TEXT NOT NULL, "
            "cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT, heartbeat_at REAL, webhook TEXT, progress TEXT)"
        )
        db.execute(
            "INSERT INTO job_records (id, service, status, created_at, outputs) VALUES ('old', 'sdxl', 'succeeded', 1, '[]')"
        )
    store = SQLiteJobStore(path)
    assert store.get("old").seed is None
    assert store.get("old").client == "" and [job.id for job in store.recent(client="")] == ["old"]


def overwrite(store: JobStore, job_id: str, field: str, record: str) -> None:
    """Writes one field of a job's record as an earlier release left it."""
    if isinstance(store, SQLiteJobStore):
        with sqlite3.connect(store.path) as db:
            db.execute(f"UPDATE job_records SET {field} = ? WHERE id = ?", (record, job_id))
    else:
        store.db.hset(store._key(job_id), field, record)


OLD_WEBHOOK = WebhookSpec(url="http://x", events=["completed"], format="job", base="/app")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ('{"url": "http://x", "events": ["completed"], "prefix": "/app"}', OLD_WEBHOOK),
        (
            '{"url": "http://x", "events": ["completed"], "prefix": "/app", "format": "job", "base": ""}',
            OLD_WEBHOOK,
        ),
        (
            '{"url": "http://x", "events": ["start"], "prefix": "", "format": "prediction", "base": "http://h"}',
            WebhookSpec(url="http://x", events=["start"], format="prediction", base="http://h"),
        ),
        ('{"url": "http://x", "events": ["completed"], "format": "job", "base": "/app"}', OLD_WEBHOOK),
        ("null", None),
    ],
    ids=[
        "first-release-prefix",
        "job-with-prefix-and-empty-base",
        "prediction-with-base",
        "current",
        "none-as-json-null",
    ],
)
def test_webhooks_written_by_earlier_releases_are_read(store, record, expected):
    job = store.create("sdxl", {})
    overwrite(store, job.id, "webhook", record)
    assert store.get(job.id).webhook == expected


def test_progress_written_as_a_plain_dict_by_earlier_releases_is_read_as_its_event(store):
    sdxl, musicgen = store.create("sdxl", {}), store.create("musicgen", {})
    overwrite(store, sdxl.id, "progress", '{"step": 1, "total": 2, "timestep": 999.0, "stage": "base"}')
    overwrite(store, musicgen.id, "progress", '{"seconds": 1.0, "total": 3.0}')
    assert store.get(sdxl.id).progress == StepProgress(1, 2, 999.0, stage="base")
    assert store.get(musicgen.id).progress == AudioProgress(1.0, 3.0)


def test_claims_take_turns_between_clients(store):
    flood = [store.create("sdxl", {}, client="key-a") for _ in range(5)]
    lone = store.create("sdxl", {}, client="key-b")
    claimed = [store.claim("r", 30).id for _ in range(3)]
    assert claimed == [flood[0].id, lone.id, flood[1].id]


def test_a_client_new_to_the_queue_goes_next(store):
    flood = [store.create("sdxl", {}, client="key-a") for _ in range(4)]
    assert store.claim("r", 30).id == flood[0].id
    assert store.claim("r", 30).id == flood[1].id
    newcomer = store.create("musicgen", {}, client="key-c")
    assert store.claim("r", 30).id == newcomer.id


def test_a_service_at_its_limit_is_skipped_until_a_job_of_it_ends(store):
    images = [store.create("sdxl", {}, client="key-a") for _ in range(2)]
    track = store.create("musicgen", {}, client="key-a")
    limits = {"sdxl": 1, "musicgen": 5}
    assert store.claim("r", 30, limits).id == images[0].id
    assert store.claim("r", 30, limits).id == track.id  # sdxl is full: key-a's next claimable job
    assert store.claim("r", 30, limits) is None
    store.finish(images[0].id, "r", "succeeded")
    assert store.claim("r", 30, limits).id == images[1].id


def test_a_cancelled_running_job_frees_its_place(store):
    job = store.create("sdxl", {})
    waiting = store.create("sdxl", {})
    store.claim("dead", 30, {"sdxl": 1})
    store.cancel(job.id)
    time.sleep(0.05)
    assert store.claim("other", 0.01, {"sdxl": 1}).id == waiting.id


def test_a_client_over_its_quota_is_refused_and_others_are_not(store):
    for _ in range(2):
        store.create("sdxl", {}, client="key-a", max_queued_per_client=2)
    with pytest.raises(ClientQueueFull):
        store.create("sdxl", {}, client="key-a", max_queued_per_client=2)
    store.create("sdxl", {}, client="key-b", max_queued_per_client=2)
    store.claim("r", 30)  # key-a's first: a place in its quota again
    store.create("sdxl", {}, client="key-a", max_queued_per_client=2)


def test_queued_jobs_are_counted_per_service(store):
    store.create("sdxl", {}, client="a")
    store.create("sdxl", {}, client="b")
    store.create("musicgen", {}, client="a")
    store.claim("r", 30)
    assert store.queued_by_service() == {"sdxl": 1, "musicgen": 1}


def test_a_clients_listing_holds_its_jobs_only(store):
    mine = [store.create("sdxl", {}, client="key-a") for _ in range(3)]
    store.create("sdxl", {}, client="key-b")
    assert [job.id for job in store.recent(client="key-a")] == [job.id for job in reversed(mine)]
    assert [job.id for job in store.recent(client="key-a", limit=1)] == [mine[-1].id]


def test_queued_jobs_of_a_sqlite_file_from_before_turns_are_claimed(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.create("sdxl", {}, client="key-a")
    with sqlite3.connect(store.path) as db:
        db.execute("DROP TABLE job_turns")  # as the release before turns left the file
    again = SQLiteJobStore(store.path)
    assert again.claim("r", 30, {"sdxl": 1}).id == job.id


def test_queued_and_running_jobs_of_a_redis_from_before_turns_are_claimed_and_counted(redis_url):
    store = RedisJobStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    running, queued = store.create("sdxl", {}, client="key-a"), store.create("sdxl", {}, client="key-b")
    store.claim("r", 30)
    # As the release before turns left Redis: only the global sets.
    newer = ["layout", "turns", "services", "running-count", "queued:sdxl", "queued:sdxl:key-b"]
    newer += ["client-queued:key-b", "client-jobs:key-a", "client-jobs:key-b"]
    store.db.delete(*(store.prefix + key for key in newer))
    again = RedisJobStore(redis_url, prefix=store.prefix)
    assert again.queued_by_service() == {"sdxl": 1}
    assert again.claim("r", 30, {"sdxl": 1}) is None  # the running one counts against the limit
    again.finish(running.id, "r", "succeeded")
    assert again.claim("r", 30, {"sdxl": 1}).id == queued.id
    assert [job.id for job in again.recent(client="key-a")] == [running.id]


def test_what_another_releases_replicas_did_during_an_upgrade_is_repaired_on_redis(redis_url):
    """The release before turns kept only the global sets: its claims, cancels and finishes must not
    make the new one run a job twice or a cancelled one, nor lose its place."""
    store = RedisJobStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:")
    taken, cancelled = store.create("sdxl", {}, client="a"), store.create("sdxl", {}, client="a")
    for job in (taken, cancelled):  # as the older release claimed and cancelled them
        store.db.zrem(store.queued, job.id)
    store.db.hset(store._key(taken.id), mapping={"status": "running", "owner": "old"})
    store.db.hset(store._key(cancelled.id), "status", "cancelled")
    assert store.claim("new", 30) is None  # neither runs again
    # A job the older release created (global sets only), and a running count it left behind.
    old = store.create("sdxl", {}, client="b")
    keep = ["job", "input", "queued", "jobs"]
    for key in store.db.keys(f"{store.prefix}*"):
        if key.removeprefix(store.prefix).split(":")[0] not in keep:
            store.db.delete(key)
    store.db.hset(f"{store.prefix}running-count", "sdxl", 5)
    store.repair()
    assert store.claim("new", 30, {"sdxl": 1}).id == old.id


def test_a_job_queued_without_a_turn_is_claimed_after_a_repair_on_sqlite(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.create("sdxl", {}, client="a")
    with sqlite3.connect(store.path) as db:
        db.execute("DELETE FROM job_turns")  # as the release before turns queued it
    assert store.claim("r", 30) is None
    store.repair()
    assert store.claim("r", 30).id == job.id


def test_a_job_keeps_the_model_and_input_its_client_named_beside_the_input_it_runs(reopen):
    shown = {"prompt": "a", "num_outputs": 2, "image": "x" * 1000}
    job = reopen().create("sdxl", {"prompt": "a", "seed": 4}, model="stability-ai/sdxl", shown_input=shown)
    again = reopen().get(job.id)
    assert again.model == "stability-ai/sdxl" and reopen().input(job.id) == {"prompt": "a", "seed": 4}
    assert again.input_summary["num_outputs"] == 2 and again.input_summary["seed"] == 4
    assert len(again.input_summary["image"]) < 1000  # summarised as any input is
    assert reopen().get(reopen().create("sdxl", {}).id).model == ""
