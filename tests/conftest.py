import copy
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import redis
import yaml
from moto.server import ThreadedMotoServer
from ray import serve
from ray.serve.schema import ServeDeploySchema

from leap_ray.engines.compile_cache import LOCATION_ENV
from leap_ray.serve.launch import deploy, local_config_path, start_ray, wait_until_running
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


# One real local Ray and one Serve instance per test session, with the graph on the tiny models
# (here, not in serve/, so that every test directory shares the one session Ray).
APP = "leap_ray"


def free_port() -> int:
    """A loopback port free now (for a server the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Graph:
    """The deployed Serve config; `deploy_with` adds applications (Serve configs are declarative:
    each deploy names every application that should exist)."""

    def __init__(self, tiny_models: dict[str, Path], jobs_folder: Path) -> None:
        raw = yaml.safe_load(local_config_path().read_text())
        self.port = free_port()
        raw["http_options"]["port"] = self.port
        (self.main,) = raw.pop("applications")
        self.jobs_folder = jobs_folder
        self.main["args"] = {
            "sdxl": {
                "model": str(tiny_models["sdxl"]),
                "loras": {"ink": str(tiny_models["sdxl-lora"]), "paper": str(tiny_models["sdxl-lora-2"])},
            },
            "refiner": {"model": str(tiny_models["sdxl-refiner"]), "engine_kwargs": {"threads": 1}},
            "musicgen": {"model": str(tiny_models["musicgen-melody"])},
            "ingress": {"jobs": self.jobs_settings(APP)},
        }
        self.base = raw
        self.url = f"http://127.0.0.1:{self.port}"

    def jobs_settings(self, application: str) -> dict[str, str]:
        """Each application its own job store: runners of one must not take the jobs of another."""
        folder = self.jobs_folder / application
        return {"store_path": str(folder / "jobs.sqlite3"), "output_dir": str(folder / "outputs")}

    def variant(
        self,
        name: str,
        env: dict[str, str] | None = None,
        deployments: dict[str, dict[str, Any]] | None = None,
        **args: Any,
    ) -> dict[str, Any]:
        """Another application of the same graph at /<name> (without the adapters, and without the
        refiner unless `refiner` args are given): its args changed, environment variables for its replicas (e.g. limits), Serve options per
        deployment, half a CPU per model replica."""
        application = copy.deepcopy(self.main)
        application.update(name=name, route_prefix=f"/{name}")
        # Lighter than the main graph, and any engine may be swapped in: no adapters, and no refiner
        # unless its args are given.
        del application["args"]["sdxl"]["loras"]
        if "refiner" not in args:
            del application["args"]["refiner"]
            application["deployments"] = [d for d in application["deployments"] if d["name"] != "Refiner"]
        application["args"]["ingress"] = {"jobs": self.jobs_settings(name)}
        if env:
            application["runtime_env"] = {"env_vars": env}
        for deployment in application["deployments"]:
            if deployment["name"] != "Ingress":
                deployment["ray_actor_options"]["num_cpus"] = 0.5
            deployment.update((deployments or {}).get(deployment["name"], {}))
        for part, settings in args.items():
            application["args"][part] = {**application["args"].get(part, {}), **settings}
        return application

    def config(self, *extra: dict[str, Any]) -> ServeDeploySchema:
        return ServeDeploySchema.model_validate({**self.base, "applications": [self.main, *extra]})

    def deploy_with(self, *extra: dict[str, Any], wait: bool = True) -> ServeDeploySchema:
        config = self.config(*extra)
        deploy(config)
        if wait:
            wait_until_running(config, timeout_s=300)
        return config


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    start_ray(
        num_cpus=6, dashboard=False
    )  # logical CPUs: the main graph's two model replicas, plus test apps
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def graph(local_ray, tiny_models, tmp_path_factory) -> Graph:
    graph = Graph(tiny_models, tmp_path_factory.mktemp("main-jobs"))
    graph.deploy_with()
    return graph


@pytest.fixture(scope="session")
def client(graph) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=graph.url, timeout=120) as client:
        yield client
