"""Jobs' outputs in an object store (`output_dir: s3://bucket/prefix`), against a real S3 API over
HTTP: moto's server, started here on a free loopback port (what obstore and s3fs test against), never
an in-process patch. Outputs round-trip from the runner to the bucket and back through the output
route and a webhook's link; expiry deletes the objects; a missing object is a 404; presigned links
fetch with plain httpx; outputs kept as files before still serve."""

import asyncio
import time
import uuid

import httpx
import obstore
import pytest
from obstore.store import S3Store
from pydantic import ValidationError

from leap_ray.config import JobsSettings
from leap_ray.serve.jobs.outputs import ObjectOutputs
from leap_ray.serve.jobs.runner import JobRunner
from leap_ray.serve.jobs.sqlite_store import SQLiteJobStore
from tests.helpers import (
    APP_URL,
    BUCKET,
    CREDENTIALS,
    SMALL,
    InProcessApp,
    Receiver,
    assert_error,
    in_process_app,
    stub_image,
)

IMAGE = {"prompt": "a lighthouse", "seed": 3, **SMALL}


@pytest.fixture
def s3(s3_endpoint, monkeypatch) -> dict[str, object]:
    """Jobs settings for a fresh prefix of the bucket: credentials from the environment, as an
    operator's would be, and the endpoint as an option."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return {
        "output_dir": f"s3://{BUCKET}/{uuid.uuid4().hex}",
        "output_store_options": {"endpoint": s3_endpoint},
        "webhook_allow_private_networks": True,
    }


def bucket(s3: dict, s3_endpoint: str) -> S3Store:
    """The prefix as obstore sees it, to look into the bucket beside the service."""
    prefix = str(s3["output_dir"]).removeprefix(f"s3://{BUCKET}/")
    return S3Store(BUCKET, prefix=prefix, endpoint=s3_endpoint, client_options={"allow_http": True})


def keys_in(store: S3Store) -> list[str]:
    return sorted(item["path"] for batch in obstore.list(store) for item in batch)


def finished(app: InProcessApp, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while (job := app.http.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    return job


def submitted(app: InProcessApp, **options: object) -> dict:
    answer = app.http.post("/v1/jobs", json={"service": "sdxl", "input": IMAGE, **options})
    assert answer.status_code == 202, answer.text
    return finished(app, answer.json()["id"])


def test_a_jobs_outputs_go_to_the_bucket_and_come_back_through_the_route(tmp_path, s3, s3_endpoint):
    with in_process_app(tmp_path, jobs_options=s3) as app:
        job = submitted(app)
        assert keys_in(bucket(s3, s3_endpoint)) == [f"{job['id']}/0.png"]
        fetched = app.http.get(job["outputs"][0])
    assert (fetched.status_code, fetched.headers["content-type"]) == (200, "image/png")
    assert fetched.content == stub_image(3)
    assert not (tmp_path / "out").exists()  # nothing on the local disk


def test_a_range_on_an_objects_output_is_not_supported_and_gets_the_whole_body(tmp_path, s3):
    """Range is served for outputs in a folder only (the route's docstring says so): an object's comes
    whole, a 200 that players take as well."""
    with in_process_app(tmp_path, jobs_options=s3) as app:
        fetched = app.http.get(submitted(app)["outputs"][0], headers={"Range": "bytes=4-19"})
    assert (fetched.status_code, fetched.content) == (200, stub_image(3))
    assert "content-range" not in fetched.headers


def test_a_webhooks_link_fetches_the_output_from_the_bucket(tmp_path, s3):
    receiver = Receiver(failures=0)
    with in_process_app(tmp_path, jobs_options=s3) as app:
        submitted(app, webhook_url=receiver.url, webhook_events_filter=["completed"])
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        (_, payload), *_ = receiver.received
        link = httpx.Response(200, content=payload).json()["outputs"][0]
        assert app.http.get(link).content == stub_image(3)
    receiver.server.shutdown()


def test_expiry_deletes_the_jobs_objects(tmp_path, s3, s3_endpoint):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    outputs = ObjectOutputs(str(s3["output_dir"]), {"endpoint": s3_endpoint})

    async def run(service, job_input, report):
        return [(b"first", "png", "image/png"), (b"second", "png", "image/png")]

    async def main() -> str:
        runner = JobRunner(
            store, outputs, run, lambda event: None, max_concurrent=1, stale_after_s=30, retention_s=3600
        )
        job = store.create("sdxl", {"prompt": "a"})
        runner.ensure_started()
        deadline = time.monotonic() + 10
        while store.get(job.id).status != "succeeded":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        return job.id

    job_id = asyncio.run(main())
    stored = store.get(job_id).outputs
    assert [outputs.read(output) for output in stored] == [b"first", b"second"]
    assert keys_in(bucket(s3, s3_endpoint)) == [f"{job_id}/0.png", f"{job_id}/1.png"]
    expiring = JobRunner(
        store, outputs, run, lambda event: None, max_concurrent=1, stale_after_s=30, retention_s=1e-9
    )
    expiring.expire_old_jobs()
    assert store.get(job_id) is None
    assert keys_in(bucket(s3, s3_endpoint)) == []


def test_the_endpoint_may_come_from_the_environment_as_the_credentials_do(s3, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")  # obstore's own switch for a plain-HTTP endpoint
    outputs = ObjectOutputs(str(s3["output_dir"]), {})
    (stored,) = outputs.write("job-1", [(b"bytes", "wav", "audio/wav")])
    assert stored == {"path": f"{s3['output_dir']}/job-1/0.wav", "content_type": "audio/wav"}
    assert outputs.read(stored) == b"bytes"


def test_a_missing_object_is_a_404_in_the_error_shape(tmp_path, s3, s3_endpoint):
    with in_process_app(tmp_path, jobs_options=s3) as app:
        job = submitted(app)
        obstore.delete(bucket(s3, s3_endpoint), f"{job['id']}/0.png")
        assert_error(app.http.get(job["outputs"][0]), 404, "index")


def test_presigned_links_fetch_from_the_store_with_plain_httpx(tmp_path, s3, s3_endpoint):
    with in_process_app(tmp_path, jobs_options={**s3, "output_urls": "presigned"}) as app:
        job = submitted(app)
        (link,) = job["outputs"]
        through_the_ingress = app.http.get(f"/v1/jobs/{job['id']}/outputs/0")
    assert link.startswith(f"{s3_endpoint}/{BUCKET}/") and "X-Amz-Signature=" in link
    fetched = httpx.get(link)
    assert (fetched.status_code, fetched.headers["content-type"]) == (200, "image/png")
    assert fetched.content == stub_image(3)
    assert through_the_ingress.status_code == 307  # the route sends clients to the store too
    assert httpx.get(through_the_ingress.headers["location"]).content == stub_image(3)


def test_an_output_kept_as_a_file_before_still_serves(tmp_path, s3):
    """A record made before object stores keeps a file path: it serves whatever the store is now."""
    old = tmp_path / "old" / "0.png"
    old.parent.mkdir()
    old.write_bytes(stub_image(9))
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = store.create("sdxl", {"prompt": "before"})
    store.claim("earlier-runner", 30)
    store.finish(
        job.id, "earlier-runner", "succeeded", outputs=[{"path": str(old), "content_type": "image/png"}]
    )
    with in_process_app(tmp_path, jobs_options={**s3, "output_urls": "presigned"}) as app:
        (link,) = app.http.get(f"/v1/jobs/{job.id}").json()["outputs"]
        assert link.startswith(f"{APP_URL}/v1/jobs/{job.id}/outputs/0?expires=")  # no presigned link for it
        assert app.http.get(link).content == stub_image(9)
        part = app.http.get(link, headers={"Range": "bytes=1-3"})  # a file: Range holds
        assert (part.status_code, part.content) == (206, stub_image(9)[1:4])


def test_a_job_whose_outputs_cannot_be_written_fails_naming_the_store(tmp_path, s3):
    down = {**s3, "output_store_options": {"endpoint": "http://127.0.0.1:9"}}
    with in_process_app(tmp_path, jobs_options=down) as app:
        answer = app.http.post("/v1/jobs", json={"service": "sdxl", "input": IMAGE})
        deadline = time.monotonic() + 60
        while (job := app.http.get(f"/v1/jobs/{answer.json()['id']}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert (job["status"], job["error"]["code"]) == ("failed", "job_store_unavailable")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"output_urls": "presigned"}, "presigned needs an object store"),
        ({"output_urls": "presigned", "output_dir": "/data/outputs"}, "presigned needs an object store"),
        ({"output_store_options": {"secret_access_key": "x"}}, "credentials come from the environment"),
        ({"output_store_options": {"aws_session_token": "x"}}, "credentials come from the environment"),
    ],
    ids=["presigned-without-a-store", "presigned-with-a-folder", "a-secret-key", "a-session-token"],
)
def test_output_settings_that_cannot_work_or_would_log_a_secret_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        JobsSettings(**options)
