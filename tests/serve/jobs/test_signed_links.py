"""Job outputs are usable without the bearer key (in process, keys on): every output link a client is
given (a job's, a prediction's, an OpenAI `url` answer's, a webhook's) is signed and expiring, fetches
without a key until it expires, and an expired, altered or unsigned-and-keyless request is refused in
the error shape."""

import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from leap_ray.client import LeapRayClient
from leap_ray.config import IngressSettings
from leap_ray.serve.jobs.links import LinkSigner
from tests.helpers import (
    APP_URL,
    SMALL,
    InProcessApp,
    Receiver,
    assert_error,
    in_process_app,
    served,
    stub_image,
)

KEY = "key-0123456789abcdef"
IMAGE = {"prompt": "a lighthouse", "seed": 11, **SMALL}
DAY_S = 24 * 3600


@pytest.fixture
def keyed(tmp_path) -> Iterator[InProcessApp]:
    """The app with an API key; its `http` client sends the key."""
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    jobs = {"webhook_allow_private_networks": True, "webhook_backoff_s": 0.05, "retention_s": 3 * DAY_S}
    with in_process_app(tmp_path, jobs_options=jobs, api_keys_file=str(tmp_path / "keys.txt")) as app:
        app.http.headers["Authorization"] = f"Bearer {KEY}"
        yield app


def anonymous(app: InProcessApp) -> httpx.Client:
    """A client into the app with no key, as a browser's <img src> is."""
    return httpx.Client(transport=app.transport, base_url=APP_URL)


def signer_of(tmp_path) -> LinkSigner:
    """The app's signer: the key derived from its API keys, as every replica derives it."""
    return LinkSigner(IngressSettings(api_keys_file=str(tmp_path / "keys.txt")).output_url_secret())


def finished(app: InProcessApp, url: str) -> dict:
    deadline = time.monotonic() + 30
    while (job := app.http.get(url).json())["status"] not in ("succeeded", "failed", "canceled", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def done_job(app: InProcessApp, **options: object) -> dict:
    submitted = app.http.post("/v1/jobs", json={"service": "sdxl", "input": IMAGE, **options})
    assert submitted.status_code == 202, submitted.text
    job = finished(app, f"/v1/jobs/{submitted.json()['id']}")
    assert job["status"] == "succeeded", job
    return job


def is_signed(link: str) -> bool:
    query = parse_qs(urlsplit(link).query)
    return set(query) == {"expires", "signature"} and len(query["signature"][0]) == 64


def test_a_signed_output_link_fetches_without_a_key(keyed):
    (link,) = done_job(keyed)["outputs"]
    assert is_signed(link)
    fetched = anonymous(keyed).get(link)
    assert (fetched.status_code, fetched.headers["content-type"]) == (200, "image/png")
    assert fetched.content == stub_image(11)


def test_an_unsigned_output_url_needs_the_key_as_before(keyed):
    (link,) = done_job(keyed)["outputs"]
    unsigned = urlsplit(link).path
    assert_error(anonymous(keyed).get(unsigned), 401)
    assert keyed.http.get(unsigned).content == stub_image(11)


def test_a_links_lifetime_is_the_setting_and_never_past_retention(tmp_path):
    (tmp_path / "keys.txt").write_text(KEY)
    jobs = {"output_url_ttl_s": 600, "retention_s": 60}
    with in_process_app(tmp_path, jobs_options=jobs, api_keys_file=str(tmp_path / "keys.txt")) as app:
        app.http.headers["Authorization"] = f"Bearer {KEY}"
        job = done_job(app)
    (expires,) = parse_qs(urlsplit(job["outputs"][0]).query)["expires"]
    assert int(expires) <= job["finished_at"] + 60  # retention (60 s), not the setting (600 s)
    assert int(expires) >= job["finished_at"] + 58


def test_an_expired_link_is_a_403(keyed, tmp_path):
    (link,) = done_job(keyed)["outputs"]
    path = urlsplit(link).path
    expired = signer_of(tmp_path).signed(path, int(time.time()) - 1)  # signed with the right key
    error = assert_error(anonymous(keyed).get(expired), 403)
    assert (error["type"], error["code"]) == ("permission_error", "link_expired")
    assert_error(keyed.http.get(expired), 403)  # a key does not revive it


def altered(link: str, other_job: str, part: str) -> str:
    url = urlsplit(link)
    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    if part == "path":
        return url._replace(path=url.path.replace(url.path.split("/")[3], other_job)).geturl()
    if part == "index":
        return url._replace(path=url.path.removesuffix("/0") + "/1").geturl()
    if part == "expiry":
        query["expires"] = str(int(query["expires"]) + DAY_S)
    elif part == "signature":
        query["signature"] = query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")
    else:
        del query[part.removeprefix("no ")]
    return url._replace(query="&".join(f"{name}={value}" for name, value in query.items())).geturl()


@pytest.mark.parametrize(
    "part",
    ["path", "index", "expiry", "signature", "no signature", "no expires"],
    ids=["another-job", "another-output", "later-expiry", "changed-signature", "no-signature", "no-expiry"],
)
def test_an_altered_link_is_a_403(keyed, part):
    (link,) = done_job(keyed)["outputs"]
    other = done_job(keyed)["id"]
    error = assert_error(anonymous(keyed).get(altered(link, other, part)), 403)
    assert error["code"] == "invalid_signature"


def test_the_links_of_a_prediction_an_openai_answer_and_a_webhook_are_signed(keyed):
    receiver = Receiver(failures=0)
    job = done_job(keyed, webhook_url=receiver.url, webhook_events_filter=["completed"])
    prediction = keyed.http.post(
        "/v1/models/leap-ray/sdxl/predictions", json={"input": IMAGE}, headers={"Prefer": "wait"}
    ).json()
    answer = keyed.http.post(
        "/v1/images/generations", json={"prompt": "a", "size": "64x64", "response_format": "url", "seed": 11}
    ).json()
    deadline = time.monotonic() + 10
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)
    receiver.server.shutdown()
    (_, hooked), *_ = receiver.received
    links = {
        "job": job["outputs"][0],
        "prediction": prediction["output"][0],
        "openai": answer["data"][0]["url"],
        "webhook": json.loads(hooked)["outputs"][0],
    }
    assert all(is_signed(link) for link in links.values()), links
    assert {name: anonymous(keyed).get(link).content for name, link in links.items()} == dict.fromkeys(
        links, stub_image(11)
    )


def test_a_predictions_chosen_id_link_opens_that_keys_prediction(keyed):
    """A chosen id is kept per key: its link names the job's store id, so that it opens without one."""
    keyed.http.put("/predictions/mine", json={"input": IMAGE})
    prediction = finished(keyed, "/v1/predictions/mine")
    (link,) = prediction["output"]
    assert anonymous(keyed).get(link).content == stub_image(11)


def test_the_light_client_fetches_outputs_by_their_links(keyed):
    with served(keyed.app) as url, LeapRayClient(url, api_key=KEY) as client:
        job = client.wait_job(client.submit_job("sdxl", IMAGE).id, poll_s=0.05, timeout_s=30)
        assert client.job_output(job) == stub_image(11)
        # A link elsewhere (an object store's presigned one) never gets the key.
        assert (
            "Authorization" not in client.output_request("https://bucket.example/o?X-Amz-Signature=1").headers
        )
        assert client.output_request(f"{url}/v1/jobs/x/outputs/0").headers["Authorization"] == f"Bearer {KEY}"


def test_the_output_route_documents_its_403(keyed):
    spec = keyed.http.get("/openapi.json").json()
    route = spec["paths"]["/v1/jobs/{job_id}/outputs/{index}"]["get"]
    assert route["responses"]["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert {"expires", "signature"} <= {parameter["name"] for parameter in route["parameters"]}
