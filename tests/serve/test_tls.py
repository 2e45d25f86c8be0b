"""HTTPS (in-process: the ingress's app with a stub model side, served by uvicorn with the session's
test certificate, `tls_certs`): the official `openai` client, httpx, the light client and `leap-ray
generate` talk to it when they trust the test CA (given, or named by SSL_CERT_FILE), and refuse it
when they do not; links in answers are https. And the settings `leap-ray serve --tls-cert --tls-key`
makes: Serve's http_options, checked before any Ray starts."""

import asyncio
import base64
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest
import trustme
from ray.serve.config import HTTPOptions

from leap_ray.cli import serving_message
from leap_ray.client import AsyncLeapRayClient, LeapRayClient
from leap_ray.serve.launch import TlsConfigError, http_address, load_config, local_config_path
from tests.helpers import SMALL, TlsCerts, make_app, served, stub_image

UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"


@pytest.fixture
def https_url(tmp_path, tls_certs) -> Iterator[str]:
    app, _ = make_app(tmp_path)
    with served(app, tls=tls_certs) as url:
        yield url


def trusting(tls_certs: TlsCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_certs.ca))


def test_the_address_is_https(https_url):
    assert https_url.startswith("https://127.0.0.1:")


def test_openai_client_trusting_the_test_ca_generates_and_lists(https_url, tls_certs):
    with httpx.Client(verify=trusting(tls_certs)) as http:
        client = openai.OpenAI(base_url=f"{https_url}/v1", api_key="x", max_retries=0, http_client=http)
        assert [model.id for model in client.models.list()] == ["sdxl", "musicgen"]
        result = client.images.generate(prompt="a", size="64x64", extra_body={"seed": 3})
        assert base64.b64decode(result.data[0].b64_json) == stub_image(3)
        (linked,) = client.images.generate(
            prompt="a", size="64x64", response_format="url", extra_body={"seed": 4}
        ).data
        assert linked.url.startswith(f"{https_url}/v1/jobs/")  # the links are https too
        assert http.get(linked.url).content == stub_image(4)


def test_clients_that_do_not_trust_the_test_ca_refuse_the_server(https_url):
    with pytest.raises(httpx.ConnectError, match=UNTRUSTED):
        httpx.get(f"{https_url}/healthz")
    client = openai.OpenAI(base_url=f"{https_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as caught:
        client.models.list()
    assert UNTRUSTED in str(caught.value.__cause__)
    with (
        LeapRayClient(https_url, retries=0) as light,
        pytest.raises(httpx.ConnectError, match=UNTRUSTED),
    ):
        light.generate_image({"prompt": "a", **SMALL, "seed": 1})


def test_the_light_client_trusts_what_verify_gives_it(https_url, tls_certs):
    with LeapRayClient(https_url, verify=trusting(tls_certs)) as client:
        (image,) = client.generate_image({"prompt": "a", **SMALL, "seed": 2}).images
    assert base64.b64decode(image.data) == stub_image(2)

    async def generate() -> bytes:
        async with AsyncLeapRayClient(https_url, verify=trusting(tls_certs)) as client:
            response = await client.generate_image({"prompt": "a", **SMALL, "seed": 5}, on_progress=print)
            return base64.b64decode(response.images[0].data)

    assert asyncio.run(generate()) == stub_image(5)


def test_the_light_client_trusts_the_ca_ssl_cert_file_names(https_url, tls_certs, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certs.ca))
    with LeapRayClient(https_url) as client:
        assert client.generate_image({"prompt": "a", **SMALL, "seed": 6}).images[0].seed == 6


def generate(url: str, output: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "SSL_CERT_FILE"}
    command = [sys.executable, "-m", "leap_ray.cli", "generate", "image", "a", "--seed", "7"]
    command += ["--width", "64", "--height", "64", "--steps", "2", "-o", output, "--url", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**environment, **env})


def test_leap_ray_generate_over_https_with_ssl_cert_file(https_url, tls_certs, tmp_path):
    output = tmp_path / "out.png"
    done = generate(https_url, str(output), SSL_CERT_FILE=str(tls_certs.ca))
    assert done.returncode == 0, done.stderr
    assert output.read_bytes() == stub_image(7)
    refused = generate(https_url, str(tmp_path / "no.png"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert (
        line.startswith(f"leap-ray: error: cannot reach the service at {https_url}: ") and UNTRUSTED in line
    )
    assert line.endswith(
        "(a certificate of a CA of your own: SSL_CERT_FILE=ca.pem names the CA's certificate to trust)"
    )


# What `leap-ray serve --tls-cert --tls-key` makes of the config, before any Ray starts.


def test_the_flags_become_serves_http_options(tls_certs):
    config = load_config(ssl_certfile=str(tls_certs.cert), ssl_keyfile=str(tls_certs.key))
    options = config.http_options
    assert (options.ssl_certfile, options.ssl_keyfile) == (str(tls_certs.cert), str(tls_certs.key))
    # What deploy() hands to serve_start: Serve's own HTTPOptions, HTTPS on.
    started = HTTPOptions(**options.model_dump())
    assert (started.ssl_certfile, started.ssl_keyfile) == (str(tls_certs.cert), str(tls_certs.key))
    assert http_address(config) == "https://127.0.0.1:8000"
    message = serving_message(config)
    assert (
        "serving at https://127.0.0.1:8000 " in message
        and "curl -s https://127.0.0.1:8000/v1/sdxl" in message
    )
    assert "curl --cacert CA.pem" in message
    plain = load_config()
    assert http_address(plain) == "http://127.0.0.1:8000" and "--cacert" not in serving_message(plain)


def with_http_options(tmp_path, **options: str) -> str:
    text = (
        local_config_path()
        .read_text()
        .replace(
            "  request_timeout_s: 600\n",
            "  request_timeout_s: 600\n" + "".join(f"  {k}: {v}\n" for k, v in options.items()),
        )
    )
    (tmp_path / "config.yaml").write_text(text)
    return str(tmp_path / "config.yaml")


def test_the_config_files_http_options_serve_https_too(tls_certs, tmp_path):
    path = with_http_options(tmp_path, ssl_certfile=str(tls_certs.cert), ssl_keyfile=str(tls_certs.key))
    assert http_address(load_config(path)) == "https://127.0.0.1:8000"


def other_key(tmp_path) -> str:
    path = tmp_path / "other.key"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        (
            "cert-only",
            "HTTPS needs a certificate and its key (--tls-cert and --tls-key, or http_options' "
            "ssl_certfile and ssl_keyfile); only the certificate was given",
        ),
        ("key-only-in-file", "only the key was given"),
        ("missing-key", "cannot read the TLS key {tmp}/none.key: No such file or directory"),
        ("not-pem", "the TLS certificate {tmp}/config.yaml and key {key} are not a PEM certificate"),
        (
            "another-key",
            "the TLS certificate {cert} and key {tmp}/other.key are not a PEM certificate and its key",
        ),
    ],
    ids=["cert-only", "key-only-in-file", "missing-key", "not-pem", "another-key"],
)
def test_https_settings_that_cannot_work_are_refused_before_ray_starts(case, says, tls_certs, tmp_path):
    cert, key = str(tls_certs.cert), str(tls_certs.key)
    with_http_options(tmp_path)
    arguments = {
        "cert-only": ({"ssl_certfile": cert}, None),
        # Serve's own schema takes a key alone, and serves plain HTTP.
        "key-only-in-file": ({}, with_http_options(tmp_path, ssl_keyfile=key)),
        "missing-key": ({"ssl_certfile": cert, "ssl_keyfile": str(tmp_path / "none.key")}, None),
        "not-pem": ({"ssl_certfile": str(tmp_path / "config.yaml"), "ssl_keyfile": key}, None),
        "another-key": ({"ssl_certfile": cert, "ssl_keyfile": other_key(tmp_path)}, None),
    }
    flags, path = arguments[case]
    with pytest.raises(TlsConfigError) as caught:
        load_config(path, **flags)
    assert says.format(tmp=tmp_path, cert=cert, key=key) in str(caught.value)


def test_serve_with_one_of_the_two_flags_is_one_line_and_starts_no_ray(tls_certs):
    command = [sys.executable, "-m", "leap_ray.cli", "serve", "--tls-key", str(tls_certs.key)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "leap-ray: error: HTTPS needs a certificate and its key (--tls-cert and --tls-key, or "
        "http_options' ssl_certfile and ssl_keyfile); only the key was given"
    )
