"""A small queue: bursts get 503 + Retry-After for the excess, never a 500; callers that go away
stop costing model time, whether their request was queued or running."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import stats

APP = "tight"
ONE_AT_A_TIME = {
    "SDXL": {
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0},
    }
}
QUICK = {"prompt": "quick", "height": 64, "width": 64, "num_inference_steps": 2}
SECONDS = {"prompt": "seconds", "height": 256, "width": 256, "num_inference_steps": 30}
MEDIUM = {"prompt": "medium", "height": 512, "width": 512, "num_inference_steps": 30}
LONG = {"prompt": "long", "height": 512, "width": 512, "num_inference_steps": 150}


@pytest.fixture(scope="module")
def tight(variants) -> str:
    variants.deploy_with(variants.variant(APP, deployments=ONE_AT_A_TIME))
    return f"{variants.url}/{APP}"


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_a_burst_gets_503_with_retry_after_for_the_excess_and_the_rest_succeed(tight):
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post(f"{tight}/v1/sdxl", json=SECONDS), range(8)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 503}, statuses
    assert 1 <= statuses.count(200) <= 3  # one running, one queued (plus one that slipped in after)
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers.get("retry-after", 0)) >= 1, (response.headers, response.text)
            assert response.json()["error"]["type"] == "overloaded_error"


def disconnect_after(url: str, body: dict, seconds: float) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, timeout=httpx.Timeout(60, read=seconds))


def test_a_running_request_stops_when_its_caller_disconnects(tight):
    before = stats("SDXL", APP)
    disconnect_after(f"{tight}/v1/sdxl", LONG, seconds=3)
    # The long request left its batch at the next step: the replica is free again at once.
    assert wait_for(lambda: stats("SDXL", APP)["ongoing"] == 0, timeout_s=20)
    after = stats("SDXL", APP)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["requests"] == before["requests"] + 1
    started = time.monotonic()
    assert httpx.post(f"{tight}/v1/sdxl", json=QUICK, timeout=60).status_code == 200
    assert time.monotonic() - started < 20  # far less than the long request would have taken


def test_a_queued_request_never_reaches_the_replica_when_its_caller_disconnects(tight):
    before = stats("SDXL", APP)
    first = threading.Thread(target=lambda: httpx.post(f"{tight}/v1/sdxl", json=MEDIUM, timeout=120))
    first.start()
    time.sleep(2)  # the first is running (even a stats call would queue behind it now)
    disconnect_after(f"{tight}/v1/sdxl", QUICK, seconds=0.5)  # queued behind the first, then gone
    first.join()
    assert wait_for(lambda: stats("SDXL", APP)["ongoing"] == 0)
    time.sleep(1)
    assert stats("SDXL", APP)["requests"] == before["requests"] + 1  # only the first one ran
    assert httpx.post(f"{tight}/v1/sdxl", json=QUICK, timeout=60).status_code == 200
