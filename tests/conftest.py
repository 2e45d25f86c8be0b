import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from moto.server import ThreadedMotoServer

from leap_ray.engines.compile_cache import LOCATION_ENV
from leap_ray.tiny import write_tiny_models
from tests.helpers import BUCKET, TlsCerts, write_tls_certs


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a real local Ray (every test that uses the `local_ray` fixture, directly or through
    `graph`) are the integration tier: `pytest -m "not integration"` runs the in-process tier.
    The multi-node cluster tests run first: a process drives one Ray at a time, and theirs is
    gone (module scope) before the session's `local_ray` starts."""
    for item in items:
        if "local_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("cluster") is None)


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Compiled engines' default compile cache, in a folder of the session's (never the user's home)."""
    folder = tmp_path_factory.mktemp("compile-cache")
    before = os.environ.get(LOCATION_ENV)
    os.environ[LOCATION_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(LOCATION_ENV)
    else:
        os.environ[LOCATION_ENV] = before


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny random-weight models, built once per test session."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A test CA and a server certificate for 127.0.0.1 and localhost (PEM files: `.cert`, `.key`,
    `.ca`), made once per session; `served(app, tls=tls_certs)` serves HTTPS with them."""
    return write_tls_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of our own on a free loopback port, stopped after the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: `make test` installs it when run as root")
        pytest.skip("redis-server is not installed (`make test` installs it when run as root)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server (a real S3 API over HTTP) on a free loopback port, with one bucket; its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    assert httpx.put(f"{endpoint}/{BUCKET}").status_code == 200  # CreateBucket
    yield endpoint
    server.stop()
