"""A multi-node Ray cluster on one machine, each node declaring GPUs it does not have, serving the
production Serve config (serve_config.yaml) with its models swapped for the simulated engines. Ray's
scheduler, Serve's controller, autoscaler and proxies then do exactly what they do on a GPU cluster,
so tests and `benchmarks/cluster.py` exercise placement, autoscaling and node loss on a laptop.

The cluster is Ray's own test cluster (`ray.cluster_utils.Cluster`): every node is a raylet of ours
on this host, this process is its driver, and every process is this one's child, ended by
`shutdown`. Ray's token auth is on, as on a real cluster (the token is ~/.ray/auth_token, made if
missing). Serve's HTTP proxies listen on loopback; each worker node's on a port of its own (Serve's
per-worker-node port), so a client can reach every node's proxy."""

import copy
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
from ray._raylet import Config
from ray.cluster_utils import Cluster
from ray.serve.schema import ServeDeploySchema

from leap_ray.serve import proxy
from leap_ray.serve.launch import LOOPBACK, deploy, is_ready

PRODUCTION_CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
SIMULATED_ENGINES = {
    "sdxl": "leap_ray.testing.simulated:SimulatedSDXLEngine",
    "musicgen": "leap_ray.testing.simulated:SimulatedMusicGenEngine",
}
MODEL_DEPLOYMENTS = ("SDXL", "MusicGen")
WORKER_PROXY_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Serve's replicas and handles report load every 10 s; a test that waits for autoscaling can't.
FAST_AUTOSCALING = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
# Autoscaling a test can watch: decisions from the last 2 s of load, acted on within seconds.
METRICS_WINDOW = ("metrics_interval_s", "look_back_period_s")
FAST_AUTOSCALING_CONFIG = {
    "metrics_interval_s": 0.5,
    "look_back_period_s": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def simulated_config(
    port: int,
    jobs_folder: Path,
    *,
    path: Path = PRODUCTION_CONFIG,
    engine_kwargs: dict[str, dict[str, Any]] | None = None,
    autoscaling: dict[str, Any] | None = None,
    deployments: dict[str, dict[str, Any]] | None = None,
    jobs: dict[str, Any] | None = None,
) -> ServeDeploySchema:
    """The config at `path` with its models swapped for simulated engines (`engine_kwargs` per model:
    `sdxl`, `musicgen`), listening on `port` of loopback, its job store under `jobs_folder`. Besides,
    `autoscaling` changes every model deployment's autoscaling_config (e.g. shorter delays),
    `deployments` replaces options by deployment name, and `jobs` adds job settings."""
    raw = yaml.safe_load(path.read_text())
    raw["http_options"].update(host=LOOPBACK, port=port)
    (application,) = raw["applications"]
    # No refiner: the simulated engines hand no latents over (and it would take GPUs of its own).
    application["args"].pop("refiner", None)
    application["deployments"] = [d for d in application["deployments"] if d["name"] != "Refiner"]
    for part, engine in SIMULATED_ENGINES.items():
        kwargs = (engine_kwargs or {}).get(part, {})
        application["args"][part] = {"model": "simulated", "engine": engine, "engine_kwargs": kwargs}
    store = {"store_path": str(jobs_folder / "jobs.sqlite3"), "output_dir": str(jobs_folder / "outputs")}
    application["args"]["ingress"] = {"jobs": {**store, **(jobs or {})}}
    for deployment in application["deployments"]:
        if deployment["name"] in MODEL_DEPLOYMENTS and autoscaling:
            deployment["autoscaling_config"].update(autoscaling)
        elif deployment["name"] == "Ingress" and autoscaling:
            # The ingress reports the queued jobs the policy adds to a model's load: over the same window.
            window = {key: autoscaling[key] for key in METRICS_WINDOW if key in autoscaling}
            deployment["autoscaling_config"].update(window)
        deployment.update(copy.deepcopy((deployments or {}).get(deployment["name"], {})))
    return ServeDeploySchema.model_validate(raw)


class LocalCluster:
    """A head node (no GPUs; Serve's controller and a proxy) and worker nodes with declared GPUs."""

    def __init__(
        self, head_cpus: int = 0, dashboard: bool = False, env: dict[str, str] | None = None
    ) -> None:
        """`env`: settings for every node's processes (e.g. FAST_AUTOSCALING), undone by `shutdown`."""
        self.saved_env = {name: os.environ.get(name) for name in (*(env or {}), AUTH_MODE_ENV)}
        os.environ.update(env or {})
        os.environ[AUTH_MODE_ENV] = "token"  # for this process and, inherited, every node's
        Config.initialize("")  # Ray reads the mode once; again, now that it is set
        ensure_token_if_auth_enabled()
        os.environ.setdefault(proxy.CALLBACK_ENV, proxy.CALLBACK)  # our error shape at every proxy
        self.dashboard_port = free_port() if dashboard else None
        self.cluster = Cluster(
            initialize_head=True,
            connect=True,
            head_node_args={
                "num_cpus": head_cpus,
                "include_dashboard": dashboard,
                "dashboard_host": LOOPBACK,
                "dashboard_port": self.dashboard_port,
            },
        )
        self.proxy_ports: dict[str, int] = {}  # node id -> its proxy's port, for worker nodes

    def add_node(self, gpus: int, cpus: int) -> str:
        """A worker node; its proxy (once Serve runs) listens on a port of its own. Returns its id."""
        port = free_port()
        os.environ[WORKER_PROXY_PORT_ENV] = str(port)  # the node's processes inherit it
        try:
            node = self.cluster.add_node(num_gpus=gpus, num_cpus=cpus)
        finally:
            del os.environ[WORKER_PROXY_PORT_ENV]
        self.proxy_ports[node.node_id] = port
        return node.node_id

    def kill_node(self, node_id: str) -> None:
        """Kills a worker node's raylet and every process on it, at once, as a machine failing would."""
        (node,) = [node for node in self.cluster.worker_nodes if node.node_id == node_id]
        self.cluster.remove_node(node, allow_graceful=False)
        del self.proxy_ports[node_id]

    def shutdown(self) -> None:
        serve.shutdown()
        ray.shutdown()
        self.cluster.shutdown()
        for name, value in self.saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def local_cluster(
    nodes: int, gpus_per_node: int, cpus_per_node: int, env: dict[str, str] | None = None
) -> Iterator[LocalCluster]:
    cluster = LocalCluster(env=env)
    try:
        for _ in range(nodes):
            cluster.add_node(gpus=gpus_per_node, cpus=cpus_per_node)
        yield cluster
    finally:
        cluster.shutdown()


def replicas(application: str = "leap_ray") -> dict[str, list[dict[str, Any]]]:
    """Each deployment's replicas, as Serve's controller knows them: state, node_id, replica_id."""
    details = serve.context._get_global_client().get_serve_details()
    deployments = details["applications"][application]["deployments"]
    return {name: deployment["replicas"] for name, deployment in deployments.items()}


def running_per_node(application: str = "leap_ray") -> dict[str, Counter[str]]:
    """Per deployment, how many RUNNING replicas each node holds."""
    return {
        name: Counter(replica["node_id"] for replica in found if replica["state"] == "RUNNING")
        for name, found in replicas(application).items()
    }


def deploy_and_wait(config: ServeDeploySchema, timeout_s: float = 300.0) -> None:
    """Deploys the config and waits until every deployment of it is HEALTHY and every proxy answers."""
    deploy(config)
    deadline = time.monotonic() + timeout_s
    port = config.http_options.port
    while time.monotonic() < deadline:
        status = serve.status()
        application = status.applications.get("leap_ray")
        if application is not None and application.status == "DEPLOY_FAILED":
            raise RuntimeError(application.message)
        if (
            application is not None
            and application.status == "RUNNING"
            and is_ready(f"http://{LOOPBACK}:{port}")
        ):
            return
        time.sleep(0.5)
    raise TimeoutError("the simulated graph did not start")
