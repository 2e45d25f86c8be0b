"""Round 2 of hardening, on a real graph: slow clients, a stalled job store, a job flood and a dying
ingress get their typed answers (408, 503 with Retry-After) while the service keeps answering."""

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from tests.helpers import SMALL, ingress_processes

APP = "hardened"
LONG = {"prompt": "long", "height": 512, "width": 512, "num_inference_steps": 150, "seed": 1}


@pytest.fixture(scope="module")
def hardened(variants, redis_url, tmp_path_factory) -> str:
    jobs = {
        "store": "redis",
        "redis_url": redis_url,
        "output_dir": str(tmp_path_factory.mktemp("hardened-outputs")),
        "store_timeout_s": 1.0,
        "max_queued_jobs": 2,
        "max_concurrent_jobs": 1,
    }
    ingress = {"jobs": jobs}
    application = variants.variant(APP, ingress=ingress, deployments={"Ingress": {"max_ongoing_requests": 8}})
    variants.deploy_with(application)
    return f"{variants.url}/{APP}"


def slow_client(port: int, path: str, answers: list[bytes]) -> None:
    """Sends the headers of a 1,000-byte body, then one byte, then nothing; keeps the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b"{")
        answer = b""
        while not whole(answer) and (chunk := sock.recv(4096)):  # the whole error body
            answer += chunk
        answers.append(answer)


def whole(answer: bytes) -> bool:
    """Whether an HTTP answer's head and its Content-Length of body have arrived."""
    head, found, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *([0-9]+)", head)
    return bool(found) and length is not None and len(body) >= int(length.group(1))


def test_slow_bodies_get_408_and_cannot_hold_the_ingress(hardened, variants):
    answers: list[bytes] = []
    clients = [
        threading.Thread(target=slow_client, args=(variants.port, f"/{APP}/v1/sdxl", answers))
        for _ in range(12)
    ]
    started = time.monotonic()
    for client in clients:
        client.start()
    time.sleep(0.5)
    health = httpx.get(f"{hardened}/healthz", timeout=30)  # queued behind 8 held slots until they free
    assert health.status_code == 200
    assert time.monotonic() - started < 10
    for client in clients:
        client.join(30)
    assert len(answers) == 12
    assert all(answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer for answer in answers)


def test_a_stalled_job_store_gives_503_while_the_service_keeps_answering(hardened, redis_url):
    pauser = redis.Redis.from_url(redis_url)
    pauser.execute_command("CLIENT", "PAUSE", 6000, "ALL")
    try:
        started = time.monotonic()
        assert httpx.get(f"{hardened}/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started < 1.0
        response = httpx.get(f"{hardened}/v1/jobs/some-job", timeout=10)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "job_store_unavailable"
        assert time.monotonic() - started < 4.0
        sdxl = httpx.post(f"{hardened}/v1/sdxl", json={"prompt": "a", **SMALL}, timeout=60)
        assert sdxl.status_code == 200  # generation does not need the store
    finally:
        pauser.execute_command("CLIENT", "UNPAUSE")


def test_jobs_beyond_the_queue_bound_get_503(hardened):
    running = httpx.post(f"{hardened}/v1/jobs", json={"service": "sdxl", "input": LONG}, timeout=30).json()
    deadline = time.monotonic() + 30
    while httpx.get(f"{hardened}/v1/jobs/{running['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    body = {"service": "sdxl", "input": {"prompt": "waiting", **SMALL}}
    responses = [httpx.post(f"{hardened}/v1/jobs", json=body, timeout=30) for _ in range(4)]
    assert [response.status_code for response in responses] == [202, 202, 503, 503]
    assert responses[2].json()["error"]["code"] == "job_queue_full" and responses[2].headers["retry-after"]
    for job in [running, *(response.json() for response in responses[:2])]:
        httpx.delete(f"{hardened}/v1/jobs/{job['id']}")


def test_an_ingress_that_dies_mid_request_answers_503_in_our_shape(hardened):
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{hardened}/v1/sdxl", json=LONG, timeout=120)
        time.sleep(3)  # the request is in the model now
        (ingress,) = ingress_processes(APP)
        ingress.kill()
        response = pending.result()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("model_unavailable_error", "ingress_failed")
