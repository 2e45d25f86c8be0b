"""Starting the graph from a Serve config file, the way `serve run CONFIG` does: Serve's own schema
validates the file and Serve's controller deploys it (so user_config, autoscaling and actor options
all come from the file). Used by `leap-ray serve` and by the integration tests."""

import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
import yaml
from ray import serve
from ray._private import ray_constants
from ray.serve._private import api as serve_api
from ray.serve.config import gRPCOptions
from ray.serve.schema import ApplicationStatusOverview, ServeDeploySchema

from leap_ray.serve import proxy

LOCAL_CONFIG = "local.yaml"
LOOPBACK = "127.0.0.1"


def local_config_path() -> Path:
    """The packaged config for the tiny models on the CPU."""
    return Path(str(resources.files("leap_ray") / "configs" / LOCAL_CONFIG))


class TlsConfigError(ValueError):
    """HTTPS asked for but not possible as configured: one of certificate and key, a file that cannot
    be read, or a pair that is not one."""


def load_config(path: str | Path | None = None, **http_options: Any) -> ServeDeploySchema:
    """Reads and validates a Serve config; `http_options` (host, port, ssl_certfile, ssl_keyfile)
    override the file's. HTTPS settings are checked here, before any Ray starts (`check_tls`)."""
    raw = yaml.safe_load(Path(path or local_config_path()).read_text())
    raw.setdefault("http_options", {}).update({k: v for k, v in http_options.items() if v is not None})
    check_tls(raw["http_options"])
    return ServeDeploySchema.model_validate(raw)


def check_tls(http_options: dict[str, Any]) -> None:
    """Both of ssl_certfile and ssl_keyfile or neither, readable here and a certificate with its key;
    raises TlsConfigError otherwise. Serve's own schema lets a key without a certificate pass (plain
    HTTP, silently), and a bad file would only fail in the proxy, after Ray has started. (On a
    cluster, every node's proxy reads the same paths: they must exist on each node.)"""
    cert, key = http_options.get("ssl_certfile"), http_options.get("ssl_keyfile")
    if not cert and not key:
        return
    if not (cert and key):
        given = "certificate" if cert else "key"
        raise TlsConfigError(
            f"HTTPS needs a certificate and its key (--tls-cert and --tls-key, or http_options' "
            f"ssl_certfile and ssl_keyfile); only the {given} was given"
        )
    for what, file in (("certificate", cert), ("key", key)):
        try:
            Path(file).read_bytes()
        except OSError as error:
            raise TlsConfigError(f"cannot read the TLS {what} {file}: {error.strerror or error}") from None
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # A callable, never None: with None, OpenSSL would ask for an encrypted key's passphrase on
        # the terminal.
        password = http_options.get("ssl_keyfile_password") or ""
        context.load_cert_chain(cert, key, password=lambda: password)
    except ssl.SSLError as error:
        raise TlsConfigError(
            f"the TLS certificate {cert} and key {key} are not a PEM certificate and its key: {error}"
        ) from None


def http_address(config: ServeDeploySchema) -> str:
    """The service's address as the config has it: https:// when it has a certificate."""
    options = config.http_options
    return f"{'https' if options.ssl_certfile else 'http'}://{options.host}:{options.port}"


# Ray's single-machine mode (its default on macOS and Windows): the node's address is 127.0.0.1, so
# every port Ray opens listens on loopback: GCS, raylet, workers, agents, and the metrics export
# (Prometheus, no auth), which binds loopback only when the node's address is loopback. ray.init has
# no argument for it (its `_node_ip_address="127.0.0.1"` is replaced by the machine's address); the
# switch is this variable, which Ray reads into ray_constants when it is imported.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _single_machine_mode() -> Iterator[None]:
    """Ray's single-machine mode while a Ray is started: for this process (its constant, read when
    ray.init picks the node's address) and for the processes ray.init starts (the variable). Both are
    restored after: the started Ray keeps its address, and nothing else in this process changes."""
    saved_env, saved_flag = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def start_ray(
    num_cpus: int | None = None,
    dashboard: bool = True,
    address: str | None = None,
    expose_metrics: bool = False,
) -> str | None:
    """Connects to the Ray cluster at `address` (or $RAY_ADDRESS) when given. Otherwise starts a Ray
    of its own on this machine for the service (no-op when already connected; never another
    cluster `ray start` left on the machine, which Ray's own discovery would join), reachable from this
    machine only: Ray's single-machine mode puts every port it opens on 127.0.0.1, its per-node metrics
    endpoint among them. With `expose_metrics` the node takes the machine's address instead, as a
    `ray start` node does, so that a Prometheus elsewhere can scrape it: the metrics endpoint then
    listens on every interface, and so do Ray's other ports. Ray's token auth (its default; the token
    is ~/.ray/auth_token) stays on either way. On a cluster started with `ray start`, set
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH on every node (see leap_ray.serve.proxy).

    Returns the address of the Ray's dashboard, which `serve status` and `serve config` talk to
    (None when this process was already connected, or without a dashboard). It is 127.0.0.1:8265
    only when that port was free: Ray takes the next free one otherwise, where the `serve` command's
    default would reach another Ray's."""
    if ray.is_initialized():
        return None
    # Ray's processes, the HTTP proxies among them, inherit this: our error shape at the proxy.
    os.environ.setdefault(proxy.CALLBACK_ENV, proxy.CALLBACK)
    if joins_cluster(address):
        return _dashboard_address(ray.init(address=address or None))
    with nullcontext() if expose_metrics else _single_machine_mode():
        context = ray.init(
            address="local",  # a new Ray, even where the machine has another (ray_current_cluster)
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            object_store_memory=256 * 1024 * 1024,
        )
    return _dashboard_address(context)


def _dashboard_address(context: Any) -> str | None:
    """The dashboard's address as an http:// URL (Ray's context gives host:port, or nothing)."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def stop_local_ray(grace_s: float = 5.0) -> None:
    """Stops Serve and Ray, then every process Ray left behind: after `ray.shutdown()` its dashboard
    and runtime-env agents stay alive as orphans, and ignore SIGTERM (so they get SIGKILL after
    `grace_s`). Only this process's own descendants are touched."""
    descendants = psutil.Process().children(recursive=True)
    try:
        if ray.is_initialized():  # not when its start was interrupted: Serve would start another Ray
            serve.shutdown()  # graceful: replicas finish what they hold (up to their shutdown timeouts)
        ray.shutdown()
    finally:  # also when interrupted (a second Ctrl-C): no Ray process of ours outlives us
        _end(descendants, grace_s)


def _end(processes: list[psutil.Process], grace_s: float) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def is_ready(url: str, verify: ssl.SSLContext | bool = True) -> bool:
    """Whether the service at `url` answers /readyz with 200 (both models have a running replica);
    over HTTPS, `verify` checks its certificate (httpx's)."""
    try:
        return httpx.get(f"{url}/readyz", timeout=5, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def deploy(config: ServeDeploySchema) -> None:
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
    )
    client.deploy_apps(config, _blocking=False)


def wait_until_running(
    config: ServeDeploySchema,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
    report: Callable[[str], None] | None = None,
    report_every_s: float = 30.0,
) -> bool:
    """Blocks until every application of the config is RUNNING (True) or `stop` is set (False);
    raises if one fails to deploy or `timeout_s` passes. None is no limit: a production replica may
    download and compile its model for many minutes, or wait for the autoscaler's new node. Every
    `report_every_s` it hands `report` what is still starting, in Serve's own words (a replica
    waiting for resources says which it asks for and which the cluster has)."""
    started = time.monotonic()
    next_report = started + report_every_s
    names = [application.name for application in config.applications]
    stop = stop or threading.Event()
    while not stop.is_set():
        applications = serve.status().applications
        states = {name: applications[name] for name in names if name in applications}
        failed = [f"{name}: {s.message}" for name, s in states.items() if s.status == "DEPLOY_FAILED"]
        if failed:
            raise RuntimeError("deployment failed: " + "; ".join(failed))
        if len(states) == len(names) and all(s.status == "RUNNING" for s in states.values()):
            return True
        now = time.monotonic()
        if timeout_s is not None and now - started > timeout_s:
            raise TimeoutError(f"not running after {timeout_s:.0f} s: {still_starting(states)}")
        if report is not None and now >= next_report:
            report(f"still starting after {now - started:.0f} s: {still_starting(states)}")
            next_report = now + report_every_s
        stop.wait(0.5)
    return False


def still_starting(applications: dict[str, ApplicationStatusOverview]) -> str:
    """The deployments not yet healthy, each with Serve's message about it."""
    starting = [
        f"{name}: {deployment.status}" + (f" ({deployment.message})" if deployment.message else "")
        for application in applications.values()
        for name, deployment in application.deployments.items()
        if deployment.status != "HEALTHY"
    ]
    return "; ".join(starting) or "the applications are being created"


def joins_cluster(address: str | None) -> bool:
    """Whether start_ray connects to a running cluster (`address`, or $RAY_ADDRESS) rather than
    starting a Ray of its own."""
    return bool(address or os.environ.get("RAY_ADDRESS"))  # an empty variable is no address


class ClusterInUse(RuntimeError):
    """The cluster joined already runs Serve applications, which deploying a config would replace."""

    def __init__(self, applications: list[str]) -> None:
        super().__init__(", ".join(applications))
        self.applications = applications


def check_cluster_is_free() -> None:
    """Raises ClusterInUse when the joined cluster's Serve runs applications:
    deploying a config replaces Serve's declarative config whole (Serve removes every application
    deployed from a config that the new one lacks: `serve deploy`, a KubeRay RayService), and takes
    over one of the same name, which leaving would then delete."""
    try:
        present = sorted(serve.status().applications)
    except Exception as error:  # a controller that is dying or does not answer: said in one line
        raise RuntimeError(f"cannot read the cluster's Serve status: {error}") from None
    if present:
        raise ClusterInUse(present)


def leave_cluster(
    config: ServeDeploySchema, timeout_s: float = 300.0, report: Callable[[str], None] = print
) -> None:
    """Removes this config's applications from the cluster it joined and disconnects, leaving the
    cluster's Serve running (serve.shutdown would remove every application). The controller removes
    them on its own once asked, however long their replicas take to drain; this waits up to
    `timeout_s` for them to go, and an interrupt (a second Ctrl-C) only stops the waiting. A
    controller that is gone or refuses is reported in one line; Ray is disconnected either way."""
    names = [application.name for application in config.applications]
    try:
        for name in names:
            serve.delete(name, _blocking=False)
        deadline = time.monotonic() + timeout_s
        while set(names) & set(serve.status().applications):
            if time.monotonic() > deadline:
                report(f"still removing {', '.join(names)} after {timeout_s:.0f} s; Serve goes on with it")
                break
            time.sleep(1)
    except Exception as error:  # whatever the cluster answers, this disconnects
        report(f"could not remove {', '.join(names)} from the cluster: {error}")
    finally:
        ray.shutdown()


def disconnect() -> None:
    """Leaves a joined cluster as it was."""
    ray.shutdown()
