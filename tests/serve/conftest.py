"""One real local Ray and one Serve instance per test session, with the graph on the tiny models; and
the ingress's app in-process, with a stub model side, for the tests that need no Ray."""

import copy
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from leap_ray.serve.launch import deploy, local_config_path, start_ray, wait_until_running
from tests.helpers import InProcessApp, in_process_app

APP = "leap_ray"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Graph:
    """The deployed Serve config; `deploy_with` adds applications (Serve configs are declarative:
    each deploy names every application that should exist)."""

    def __init__(self, tiny_models: dict[str, Path], jobs_folder: Path) -> None:
        raw = yaml.safe_load(local_config_path().read_text())
        self.port = _free_port()
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


def stats(deployment: str, app: str = APP) -> dict[str, int]:
    """A model deployment's replica counters (requests, cancelled, ongoing, steps)."""
    return serve.get_deployment_handle(deployment, app).stats.remote().result()


@pytest.fixture
def replica_stats():
    """Requests each model deployment's replica has run."""
    return lambda: {name: stats(name)["requests"] for name in ("SDXL", "MusicGen")}


@pytest.fixture(scope="module")
def variants(graph: Graph) -> Iterator[Graph]:
    """For a test module that deploys its own applications beside the main one: removes them after."""
    yield graph
    graph.deploy_with()


@pytest.fixture
def in_process(tmp_path) -> Iterator[InProcessApp]:
    """The ingress's HTTP app with a stub model side (no Ray), served on an event loop of its own, and
    a sync client into it; its jobs run as the ingress's do."""
    with in_process_app(tmp_path) as app:
        yield app
