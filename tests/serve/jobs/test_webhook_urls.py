"""Webhook URLs, in process: a malformed URL is a 422 naming the field, no IPv6 form of a private
address gets through, and every delivery attempt resolves the host again and posts to the address it
checked (DNS rebinding gets nothing), with no wait after the last attempt."""

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from leap_ray.errors import InvalidRequest
from leap_ray.serve.jobs import webhooks
from leap_ray.serve.jobs.webhooks import _is_public, check_webhook_url, deliver, parse_webhook_url

SECRET = b"webhook-secret-for-tests"
PAYLOAD = {"id": "job-1", "status": "succeeded"}


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://example.com:99999/",
        "http://example.com:-1/",
        "http://example.com:0/",
        "http://example.com:abc/",
        "http://example.com:８０/",
        "http://[::1]:80:80/",
        "http://exa mple.com/",
        "http://example.com\t/",
        "http://ex\nample.com/",
        "http:///x",
        "http://:80/",
        "http://user@example.com/",
        "http://user@127.0.0.1@example.com/",
        "http://example.com\\@127.0.0.1/",
        "http://[::1]x/",
        "http://]::1[/",
        "http://[fe80::1%25eth0]/",
        "http://[v1.x]/",
        "http://[127.0.0.1]/",
        "http://ex%61mple.com/",
        "http://a..b/",
        "http://" + "a" * 64 + ".com/",
        "http://exa\u2100mple.com/",
        "http://127.1/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://127.000.0.1/",
        "ftp://example.com/",
        "not a url",
        "",
    ],
    ids=[
        "unclosed-bracket",
        "port-too-big",
        "port-negative",
        "port-zero",
        "port-not-a-number",
        "port-fullwidth-digits",
        "two-ports",
        "space-in-host",
        "tab",
        "newline",
        "empty-host",
        "port-without-host",
        "userinfo",
        "two-at-signs",
        "backslash-before-at",
        "junk-after-bracket",
        "reversed-brackets",
        "ipv6-zone",
        "ipvfuture",
        "ipv4-in-brackets",
        "percent-in-host",
        "empty-label",
        "label-over-63",
        "nfkc-invalid",
        "short-ipv4",
        "hex-ipv4",
        "integer-ipv4",
        "ipv4-leading-zeros",
        "ftp",
        "garbage",
        "empty",
    ],
)
def test_a_malformed_webhook_url_is_an_invalid_request_naming_it(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url(url, allow_private=True)
    assert caught.value.param == "webhook_url"


@given(st.text() | st.text().map(lambda rest: "http://" + rest))
@settings(max_examples=500, deadline=None)
def test_parsing_any_text_raises_nothing_but_invalid_request(url: str) -> None:
    try:
        parse_webhook_url(url)
    except InvalidRequest as error:
        assert error.param == "webhook_url"


@pytest.mark.parametrize(
    ("url", "host", "port", "target", "host_header"),
    [
        ("HTTP://Example.COM", "example.com", 80, "/", "example.com"),
        (
            "https://hooks.example.com:8443/a/b?c=d#e",
            "hooks.example.com",
            8443,
            "/a/b?c=d",
            "hooks.example.com:8443",
        ),
        ("https://example.com:443/", "example.com", 443, "/", "example.com"),
        ("http://example.com:/x", "example.com", 80, "/x", "example.com"),
        ("http://example.com?@evil.test/", "example.com", 80, "/?@evil.test/", "example.com"),
        ("http://\u00e9xample.com/", "xn--xample-9ua.com", 80, "/", "xn--xample-9ua.com"),
        ("http://8.8.8.8:8080/h", "8.8.8.8", 8080, "/h", "8.8.8.8:8080"),
        ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111", 80, "/", "[2606:4700:4700::1111]"),
    ],
    ids=["upper-case", "port-path-query", "default-port", "empty-port", "at-in-query", "idn", "ipv4", "ipv6"],
)
def test_a_valid_webhook_url_is_taken_apart(
    url: str, host: str, port: int, target: str, host_header: str
) -> None:
    parsed = parse_webhook_url(url)
    assert (parsed.host, parsed.port, parsed.target, parsed.host_header) == (host, port, target, host_header)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.0.7", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("224.0.0.1", False),
        ("233.252.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("ff0e::1", False),
        ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),
        ("::8.8.8.8", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::808:808", False),
        ("2002:7f00:1::", False),
        ("2002:808:808::", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        ("3fff::1", False),
        ("5f00::1", False),
    ],
    ids=lambda value: str(value),
)
def test_is_public(address: str, public: bool) -> None:
    assert _is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        "http://0.0.0.0:8000/",
        "http://100.64.0.1/",
    ],
    ids=["ipv4-mapped", "ipv4-compatible", "nat64", "nat64-local-use", "6to4", "teredo", "zeros", "cgnat"],
)
def test_ipv6_and_other_forms_of_private_addresses_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url(url, allow_private=False)
    assert caught.value.param == "webhook_url"


def fake_dns(monkeypatch: pytest.MonkeyPatch, *answers: list[str]) -> list[str]:
    """Makes the webhook resolver answer its n-th call with answers[n] (the last one repeats); returns
    the names it was asked for."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[webhooks.IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address(address) for address in answers[min(len(asked), len(answers)) - 1]]

    monkeypatch.setattr(webhooks, "_resolve", resolve)
    return asked


def test_a_name_with_any_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, ["8.8.8.8", "10.0.0.5"])
    with pytest.raises(InvalidRequest) as caught:
        check_webhook_url("https://hooks.example/x", allow_private=False)
    assert caught.value.param == "webhook_url"


def test_a_name_with_only_public_addresses_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, ["8.8.8.8", "2606:4700:4700::1111"])
    check_webhook_url("https://hooks.example/x", allow_private=False)
    assert asked == ["hooks.example"]


class Receiver:
    """A loopback HTTP(S) server that answers every POST with `status` and records it, and the TLS
    server names (SNI) clients sent."""

    def __init__(self, status: int = 204, tls: ssl.SSLContext | None = None) -> None:
        self.status, self.received, self.server_names = status, [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def send(url: str, *, allow_private: bool, attempts: int = 1, backoff_s: float = 0.0) -> bool:
    coroutine = deliver(
        url,
        "completed",
        PAYLOAD,
        secret=SECRET,
        attempts=attempts,
        backoff_s=backoff_s,
        allow_private=allow_private,
    )
    return asyncio.run(coroutine)


def test_delivery_goes_to_the_checked_address_with_the_original_host_header(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    asked = fake_dns(monkeypatch, ["127.0.0.1"])
    assert send(f"http://hooks.example:{receiver.port}/hook?job=1", allow_private=True)
    assert asked == ["hooks.example"]
    ((path, headers, body),) = receiver.received
    assert (path, headers["Host"], json.loads(body)) == (
        "/hook?job=1",
        f"hooks.example:{receiver.port}",
        PAYLOAD,
    )
    assert headers["X-LeapRay-Event"] == "completed"
    assert Webhook(SECRET).verify(body, headers) == PAYLOAD


def test_a_name_rebound_to_loopback_after_the_check_gets_nothing(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    asked = fake_dns(monkeypatch, ["8.8.8.8"], ["127.0.0.1"])
    url = f"http://rebind.example:{receiver.port}/hook"
    check_webhook_url(url, allow_private=False)
    assert not send(url, allow_private=False, attempts=2)
    assert receiver.received == []
    assert asked == ["rebind.example"] * 3  # the check, then every attempt


def test_a_private_address_is_not_posted_to_unless_allowed(receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.port}/hook"
    assert not send(url, allow_private=False)
    assert receiver.received == []
    assert send(url, allow_private=True)
    assert len(receiver.received) == 1


def test_a_malformed_url_is_not_delivered() -> None:
    assert not send("http://[::1", allow_private=True, attempts=3, backoff_s=10)


def test_there_is_no_wait_after_the_last_failed_attempt() -> None:
    with socket.socket() as sock:  # a port nobody listens on: every attempt is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    assert not send(f"http://127.0.0.1:{port}/hook", allow_private=True, attempts=3, backoff_s=0.5)
    elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 2.5  # 0.5 + 1.0 between the attempts, not another 2.0 after the last


def certificate_authority(folder: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA file for clients and a server context with a certificate for `name` (and no IP address)
    signed by it."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if subject == issuer:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_file, chain_file = folder / "ca.pem", folder / "server.pem"
    ca_file.write_bytes(
        certificate("Test CA", ca_key, "Test CA", ca_key).public_bytes(serialization.Encoding.PEM)
    )
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server_pem = certificate(name, server_key, "Test CA", ca_key).public_bytes(serialization.Encoding.PEM)
    chain_file.write_bytes(server_pem + key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file)
    return ca_file, context


@pytest.mark.parametrize(("name", "delivered"), [("hooks.example", True), ("other.example", False)])
def test_https_delivery_names_the_host_for_sni_and_the_certificate_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, delivered: bool
) -> None:
    ca_file, context = certificate_authority(tmp_path, "hooks.example")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # httpx's default context trusts it then
    fake_dns(monkeypatch, ["127.0.0.1"])
    server = Receiver(tls=context)
    try:
        assert send(f"https://{name}:{server.port}/hook", allow_private=True) is delivered
    finally:
        server.close()
    assert server.server_names == [name]
    assert len(server.received) == int(delivered)  # a certificate for another name: nothing is sent
