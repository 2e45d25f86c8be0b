"""Jobs on a real graph: submitted, polled to success with outputs equal to the synchronous result,
cancelled while queued or running, and still there (and finished) after the ingress replica is killed."""

import io
import signal
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import ingress_processes

from .conftest import stats

APP = "jobs"
SMALL = {"height": 64, "width": 64, "num_inference_steps": 2}
LONG = {"prompt": "long", "height": 512, "width": 512, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def jobs(variants, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("jobs")
    settings = {
        "store_path": str(folder / "jobs.sqlite3"),
        "output_dir": str(folder / "outputs"),
        "max_concurrent_jobs": 1,
        "stale_after_s": 3,
    }
    variants.deploy_with(variants.variant(APP, ingress={"jobs": settings}))
    return f"{variants.url}/{APP}"


def wait_for_status(url: str, job_id: str, wanted: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
        if response.status_code == 200 and response.json()["status"] in wanted:
            return response.json()
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {wanted}")


def submit(url: str, service: str, job_input: dict) -> dict:
    response = httpx.post(f"{url}/v1/jobs", json={"service": service, "input": job_input}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def test_a_job_succeeds_and_its_outputs_equal_the_synchronous_result(jobs):
    body = {"prompt": "a lighthouse", "seed": 21, **SMALL}
    job = submit(jobs, "sdxl", body)
    assert job["status"] in ("queued", "running") and job["url"].endswith(job["id"])
    done = wait_for_status(jobs, job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    assert (done["progress"]["step"], done["progress"]["total"]) == (2, 2)
    (output_url,) = done["outputs"]
    assert output_url.startswith(f"{jobs}/v1/jobs/") and set(done["timings"]) == {"queued_s", "run_s"}
    output = httpx.get(output_url)
    assert output.headers["content-type"] == "image/png"
    sync = httpx.post(f"{jobs}/v1/sdxl", json=body, headers={"Accept": "image/png"}, timeout=60)
    as_pixels = [np.asarray(Image.open(io.BytesIO(r.content))).astype(int) for r in (output, sync)]
    assert np.abs(as_pixels[0] - as_pixels[1]).max() <= 1


def test_a_music_job_gives_the_synchronous_track(jobs):
    body = {"prompt": "lo-fi beat", "duration": 1, "seed": 5}
    done = wait_for_status(jobs, submit(jobs, "musicgen", body)["id"], {"succeeded", "failed"})
    assert done["progress"] == {"seconds": 1.0, "total": 1.0}
    track = httpx.get(done["outputs"][0])
    assert track.headers["content-type"] == "audio/wav"
    sync = httpx.post(f"{jobs}/v1/musicgen", json=body, headers={"Accept": "audio/wav"}, timeout=60)
    assert track.content == sync.content


def test_invalid_input_is_refused_at_once_naming_the_field(jobs):
    response = httpx.post(f"{jobs}/v1/jobs", json={"service": "sdxl", "input": {"prompt": "a", "width": 100}})
    assert (response.status_code, response.json()["error"]["param"]) == (422, "input.width")
    assert httpx.get(f"{jobs}/v1/jobs/no-such-job").status_code == 404


def test_cancelling_a_queued_and_a_running_job(jobs):
    before = stats("SDXL", APP)
    running = submit(jobs, "sdxl", LONG)
    wait_for_status(jobs, running["id"], {"running"})
    queued = submit(jobs, "sdxl", {"prompt": "never", **SMALL})  # one job at a time: it waits
    assert httpx.delete(f"{jobs}/v1/jobs/{queued['id']}").json()["status"] == "cancelled"
    time.sleep(2)  # the long one is in the model now
    assert httpx.delete(f"{jobs}/v1/jobs/{running['id']}").json()["cancel_requested"] is True
    assert (
        wait_for_status(jobs, running["id"], {"cancelled", "succeeded"}, timeout_s=30)["status"]
        == "cancelled"
    )
    deadline = time.monotonic() + 30
    while stats("SDXL", APP)["ongoing"] and time.monotonic() < deadline:
        time.sleep(0.3)
    after = stats("SDXL", APP)
    assert after["ongoing"] == 0
    assert after["requests"] == before["requests"] + 1  # the queued job never reached the model
    cancelled = httpx.get(f"{jobs}/v1/jobs", params={"status": "cancelled"}).json()
    assert {queued["id"], running["id"]} <= {job["id"] for job in cancelled}


def survives_a_killed_ingress(url: str, app: str) -> None:
    """Jobs stay readable after the ingress replica is SIGKILLed, and its successor finishes them."""
    finished = submit(url, "sdxl", {"prompt": "before", "seed": 1, **SMALL})
    wait_for_status(url, finished["id"], {"succeeded"})
    pending = submit(
        url, "sdxl", {"prompt": "across the restart", "seed": 2, **SMALL, "num_inference_steps": 40}
    )
    (ingress,) = ingress_processes(app)
    ingress.send_signal(signal.SIGKILL)
    done = wait_for_status(url, pending["id"], {"succeeded", "failed"}, timeout_s=180)
    assert done["status"] == "succeeded", done
    assert httpx.get(f"{url}/v1/jobs/{finished['id']}").json()["status"] == "succeeded"
    assert ingress_processes(app) and ingress_processes(app)[0].pid != ingress.pid


def test_jobs_outlive_a_killed_ingress_replica_with_sqlite(jobs):
    survives_a_killed_ingress(jobs, APP)
