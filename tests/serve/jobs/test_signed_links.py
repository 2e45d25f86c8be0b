"""Job outputs are usable without the bearer key (in process, keys on): every output link a client is
given (a job's, a prediction's, an OpenAI `url` answer's, a webhook's) is signed and expiring, fetches
without a key until it expires, and an expired, altered or unsigned-and-keyless request is refused in
the error shape; with the owner's key, an expired link still fetches. Outputs kept in a folder answer
Range requests and HEAD; a signing key file shorter than 32 bytes is refused at startup."""

import base64
import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from leap_ray.api.responses import JobView
from leap_ray.client import LeapRayClient
from leap_ray.config import IngressSettings, JobsSettings
from leap_ray.serve.jobs.links import LinkSigner
from tests.helpers import (
    APP_URL,
    SMALL,
    InProcessApp,
    Receiver,
    assert_error,
    in_process_app,
    make_app,
    served,
    stub_image,
)

KEY = "key-0123456789abcdef"
OTHER_KEY = "key-fedcba9876543210"  # a second user's: sees none of KEY's jobs
IMAGE = {"prompt": "a lighthouse", "seed": 11, **SMALL}
DAY_S = 24 * 3600


@pytest.fixture
def keyed(tmp_path) -> Iterator[InProcessApp]:
    """The app with two users' API keys; its `http` client sends the first's (KEY)."""
    (tmp_path / "keys.txt").write_text(f"{KEY}\n{OTHER_KEY}\n")
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


def expired_link(app: InProcessApp, tmp_path, job: dict) -> str:
    """The job's first output link, signed with the right key but expired a second ago."""
    path = urlsplit(job["outputs"][0]).path
    return APP_URL + signer_of(tmp_path).signed(path, int(time.time()) - 1)


def test_an_expired_link_without_a_key_is_a_403(keyed, tmp_path):
    expired = expired_link(keyed, tmp_path, done_job(keyed))
    error = assert_error(anonymous(keyed).get(expired), 403)
    assert (error["type"], error["code"]) == ("permission_error", "link_expired")


def test_an_expired_link_with_the_owners_key_fetches_the_output(keyed, tmp_path):
    expired = expired_link(keyed, tmp_path, done_job(keyed))
    fetched = keyed.http.get(expired)
    assert (fetched.status_code, fetched.content) == (200, stub_image(11))


def test_an_expired_link_with_a_wrong_key_is_still_a_403(keyed, tmp_path):
    expired = expired_link(keyed, tmp_path, done_job(keyed))
    wrong = anonymous(keyed).get(expired, headers={"Authorization": "Bearer not-a-key"})
    assert assert_error(wrong, 403)["code"] == "link_expired"


def test_an_altered_link_with_another_users_key_is_a_404_as_their_unsigned_fetch(keyed):
    """A link that does not hold falls back to the key sent, whose jobs do not include this one: the
    route's ownership rule answers, as for any other key's job (404 naming job_id)."""
    (link,) = done_job(keyed)["outputs"]
    other = done_job(keyed)["id"]
    forged = altered(link, other, "signature")
    as_other = anonymous(keyed).get(forged, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert_error(as_other, 404, "job_id")
    assert keyed.http.get(forged).content == stub_image(11)  # the owner's key: its own job


def test_the_light_client_fetches_an_old_job_views_output_with_its_key(keyed, tmp_path):
    """A job view kept past its links' lifetime: job_output sends the key, which opens the output."""
    job = done_job(keyed)
    old_view = JobView.model_validate({**job, "outputs": [expired_link(keyed, tmp_path, job)]})
    with served(keyed.app) as url, LeapRayClient(url, api_key=KEY) as client:
        old_view.outputs[0] = old_view.outputs[0].replace(APP_URL, url)
        assert client.job_output(old_view) == stub_image(11)


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


def test_a_range_request_on_a_folder_output_gets_206_with_those_bytes(keyed):
    """Browsers' <audio> players (Safari's) fetch by ranges, through the keyless link."""
    (link,) = done_job(keyed)["outputs"]
    whole = stub_image(11)
    part = anonymous(keyed).get(link, headers={"Range": "bytes=4-19"})
    assert part.status_code == 206
    assert part.content == whole[4:20]
    assert part.headers["content-range"] == f"bytes 4-19/{len(whole)}"
    assert (part.headers["accept-ranges"], part.headers["content-type"]) == ("bytes", "image/png")


def test_a_folder_output_has_an_etag_and_last_modified(keyed):
    (link,) = done_job(keyed)["outputs"]
    fetched = anonymous(keyed).get(link)
    assert fetched.headers["etag"] and fetched.headers["last-modified"]


def test_head_on_an_output_gives_its_length_without_a_body(keyed):
    (link,) = done_job(keyed)["outputs"]
    head = anonymous(keyed).head(link)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(stub_image(11))
    assert head.headers["content-type"] == "image/png"
    assert head.content == b""


def test_a_folder_output_that_is_gone_is_a_404_in_the_error_shape(keyed, tmp_path):
    job = done_job(keyed)
    (tmp_path / "out" / job["id"] / "0.png").unlink()
    assert_error(anonymous(keyed).get(job["outputs"][0]), 404, "index")
    assert anonymous(keyed).head(job["outputs"][0]).status_code == 404  # HEAD: the status, no body


@pytest.mark.parametrize(
    "secret",
    [b"", b"  \n", b"x" * 31, b" " + b"x" * 31 + b"\n", b"whsec_" + base64.b64encode(b"k" * 24)],
    ids=["empty", "whitespace", "31-bytes", "31-bytes-after-stripping", "whsec-of-24-bytes"],
)
def test_a_short_output_url_secret_file_is_refused_at_startup(tmp_path, secret):
    """An empty file would sign with b"", so that anyone could forge links."""
    (tmp_path / "link.key").write_bytes(secret)
    with pytest.raises(ValueError, match=r"output_url_secret_file .*at least 32"):
        make_app(tmp_path, jobs_options={"output_url_secret_file": str(tmp_path / "link.key")})


@pytest.mark.parametrize(
    "secret",
    [b"x" * 32 + b"\n", b"whsec_" + base64.b64encode(b"k" * 32)],
    ids=["32-bytes", "whsec-of-32-bytes"],
)
def test_an_output_url_secret_file_of_32_bytes_signs(tmp_path, secret):
    (tmp_path / "link.key").write_bytes(secret)
    settings = JobsSettings(output_url_secret_file=str(tmp_path / "link.key"))
    assert len(settings.output_url_secret(())) == 32
