"""Job webhooks: signed, retried after a failure, and never sent to the service's own network unless
the operator allows it (the tests allow loopback to reach their receiver)."""

import asyncio
import base64
import json
import time

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from leap_ray.config import JobsSettings
from leap_ray.errors import InvalidRequest
from leap_ray.serve.jobs import webhooks
from leap_ray.serve.jobs.webhooks import check_webhook_url, deliver
from tests.helpers import Receiver

SECRET = b"webhook-secret-for-tests"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.7/hook",
        "http://169.254.169.254/",
        "http://[::1]/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
    ids=["loopback", "private-10", "private-192", "link-local-metadata", "loopback-v6", "ftp", "garbage"],
)
def test_webhooks_to_the_services_own_network_or_not_http_are_refused(url):
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url(url, allow_private=False)
    assert caught.value.param == "webhook_url"


def test_an_operator_may_allow_private_addresses_but_never_other_schemes():
    check_webhook_url("http://127.0.0.1:9/hook", allow_private=True)
    with pytest.raises(InvalidRequest):
        check_webhook_url("file:///etc/passwd", allow_private=True)


def delivered(receiver: Receiver, secret: bytes = SECRET) -> bool:
    payload = {"id": "job-1", "status": "succeeded"}
    return asyncio.run(
        deliver(
            receiver.url, "completed", payload, secret=secret, attempts=3, backoff_s=0.01, allow_private=True
        )
    )


def test_a_standard_webhooks_verifier_accepts_every_attempt_of_a_delivery_under_one_id():
    receiver = Receiver(failures=1)
    assert delivered(receiver)
    (first, _), (second, body) = receiver.attempts_seen
    assert first["webhook-id"] == second["webhook-id"]  # a receiver drops the duplicate by its id
    for verifier in (Webhook(SECRET), Webhook("whsec_" + base64.b64encode(SECRET).decode())):
        assert verifier.verify(body, second) == {"id": "job-1", "status": "succeeded"}
    assert "X-LeapRay-Signature" not in second  # the body's HMAC alone, replayable: no longer sent
    receiver.server.shutdown()


def test_a_standard_webhooks_verifier_rejects_a_replayed_or_altered_delivery(monkeypatch):
    receiver = Receiver(failures=0)
    ten_minutes_ago = time.time() - 600
    monkeypatch.setattr(webhooks.time, "time", lambda: ten_minutes_ago)
    assert delivered(receiver)
    monkeypatch.undo()
    assert delivered(receiver)
    (replayed, old_body), (fresh, body) = receiver.attempts_seen
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(old_body, replayed)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"succeeded", b"failed"), fresh)
    with pytest.raises(WebhookVerificationError):
        Webhook(b"another secret").verify(body, fresh)
    receiver.server.shutdown()


def test_a_whsec_secret_file_holds_the_key_base64_encoded(tmp_path):
    (tmp_path / "secret").write_text("whsec_" + base64.b64encode(SECRET).decode() + "\n")
    assert JobsSettings(webhook_secret_file=str(tmp_path / "secret")).webhook_secret() == SECRET


@pytest.fixture(scope="module")
def hooked(variants, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "secret").write_bytes(SECRET + b"\n")
    settings = {
        "store_path": str(folder / "jobs.sqlite3"),
        "output_dir": str(folder / "outputs"),
        "webhook_secret_file": str(folder / "secret"),
        "webhook_allow_private_networks": True,
        "webhook_backoff_s": 0.2,
    }
    variants.deploy_with(variants.variant("hooked", ingress={"jobs": settings}))
    return f"{variants.url}/hooked"


def test_a_completed_job_is_posted_signed_after_a_failed_first_delivery(hooked):
    receiver = Receiver(failures=1)
    body = {
        "service": "sdxl",
        "input": {"prompt": "a", "height": 64, "width": 64, "num_inference_steps": 2},
        "webhook_url": receiver.url,
        "webhook_events_filter": ["start", "completed"],
    }
    job = httpx.post(f"{hooked}/v1/jobs", json=body).json()
    deadline = time.monotonic() + 120
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    events = {headers["X-LeapRay-Event"]: (headers, raw) for headers, raw in receiver.received}
    assert set(events) == {"start", "completed"}
    assert receiver.attempts == 3  # the first delivery failed and was retried
    headers, raw = events["completed"]
    assert Webhook(SECRET).verify(raw, headers)
    payload = json.loads(raw)
    assert (payload["id"], payload["status"], len(payload["outputs"])) == (job["id"], "succeeded", 1)
    receiver.server.shutdown()


def test_progress_events_are_sent_when_asked_for(hooked):
    receiver = Receiver(failures=0)
    body = {
        "service": "musicgen",
        "input": {"prompt": "a", "duration": 3, "seed": 1},
        "webhook_url": receiver.url,
        "webhook_events_filter": ["progress", "completed"],
    }
    httpx.post(f"{hooked}/v1/jobs", json=body)
    deadline = time.monotonic() + 120
    while (
        not any(h["X-LeapRay-Event"] == "completed" for h, _ in receiver.received)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    events = [(headers["X-LeapRay-Event"], json.loads(raw)) for headers, raw in receiver.received]
    progress = [payload["progress"] for event, payload in events if event == "progress"]
    assert progress and progress[0]["total"] == 3.0
    assert "completed" in {event for event, _ in events} and "start" not in {event for event, _ in events}
    receiver.server.shutdown()


def test_a_refused_webhook_url_is_a_422_naming_it(hooked):
    body = {"service": "sdxl", "input": {"prompt": "a"}, "webhook_url": "gopher://example.com/"}
    response = httpx.post(f"{hooked}/v1/jobs", json=body)
    assert (response.status_code, response.json()["error"]["param"]) == (422, "webhook_url")


def test_a_prediction_webhook_sends_the_prediction_signed(hooked):
    receiver = Receiver(failures=0)
    body = {
        "input": {"prompt": "a", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 4},
        "webhook": receiver.url,
        "webhook_events_filter": ["completed"],
    }
    created = httpx.post(f"{hooked}/v1/models/leap-ray/sdxl/predictions", json=body, timeout=30).json()
    deadline = time.monotonic() + 120
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.2)
    (headers, raw), *_ = receiver.received
    prediction = Webhook(SECRET).verify(raw, headers)
    assert (prediction["id"], prediction["status"]) == (created["id"], "succeeded")
    assert prediction["output"][0].startswith(f"{hooked}/v1/jobs/{created['id']}/outputs/")
    receiver.server.shutdown()
