"""A key's queued jobs are bounded (`max_queued_jobs_per_key`): more get 429 quota_exceeded with
Retry-After, in the error shape; other keys' submissions are not affected."""

import time

from tests.helpers import assert_error, in_process_app

KEYS = {"key-a": "sk-a", "key-b": "sk-b"}
JOB = {"service": "sdxl", "input": {"prompt": "a", "height": 64, "width": 64, "num_inference_steps": 2}}


def test_a_key_past_its_queued_jobs_gets_429_and_another_key_does_not(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(KEYS.values()) + "\n")
    jobs = {"max_queued_jobs_per_key": 2, "max_concurrent_jobs": 1}
    with in_process_app(tmp_path, jobs_options=jobs, api_keys_file=str(keys)) as service:
        service.gateway.hold_s = 30  # the first job runs; the next ones wait
        as_a, as_b = ({"Authorization": f"Bearer {key}"} for key in KEYS.values())
        first = service.http.post("/v1/jobs", json=JOB, headers=as_a).json()
        deadline = time.monotonic() + 10
        while service.http.get(f"/v1/jobs/{first['id']}", headers=as_a).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = [service.http.post("/v1/jobs", json=JOB, headers=as_a) for _ in range(2)]
        assert [response.status_code for response in waiting] == [202, 202]
        refused = service.http.post("/v1/jobs", json=JOB, headers=as_a)
        error = assert_error(refused, 429)
        assert error["code"] == "quota_exceeded" and refused.headers["retry-after"]
        assert service.http.post("/v1/jobs", json=JOB, headers=as_b).status_code == 202
        service.http.delete(f"/v1/jobs/{waiting[0].json()['id']}", headers=as_a)
        assert service.http.post("/v1/jobs", json=JOB, headers=as_a).status_code == 202
