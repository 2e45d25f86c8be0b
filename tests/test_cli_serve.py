"""`leap-ray serve` in the foreground: it serves (over HTTPS, with --tls-cert and --tls-key), Ray's
own `serve status` and `serve config` work against it, Ray listens on loopback with its token auth on,
and SIGTERM stops it leaving no process behind (integration: a real Ray). In-process: the Ray it
starts is its own, on loopback unless told to expose its metrics."""

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
import yaml

from leap_ray.cli import build_parser, main, serving_message, uses_tiny_models
from leap_ray.serve import launch
from leap_ray.serve.launch import is_ready, local_config_path

ROOT = Path(__file__).parents[1]
RAYS_DEFAULT_DASHBOARD = ("127.0.0.1", 8265)
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_cli(*args: str) -> str:
    """Ray's `serve` command as `leap-ray serve` tells operators to type it (the dashboard's address
    with -a, and the token in ~/.ray/auth_token when told that Ray's token auth is on)."""
    serve = Path(sys.executable).with_name("serve")
    environment = {**os.environ, "RAY_AUTH_MODE": "token"}
    done = subprocess.run([str(serve), *args], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_ray_tools_and_exposure(ray_processes: list[psutil.Process], dashboard: str) -> None:
    status = yaml.safe_load(serve_cli("status", "-a", dashboard))
    application = status["applications"]["leap_ray"]
    assert application["status"] == "RUNNING"
    assert set(application["deployments"]) == {"Ingress", "SDXL", "Refiner", "MusicGen"}
    (config,) = yaml.safe_load_all(serve_cli("config", "-a", dashboard))
    assert config["import_path"] == "leap_ray.serve.app:build_app"
    # Ray's token auth is on: without the token (which the CLI read from ~/.ray/auth_token) it refuses.
    refused = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10)
    assert refused.status_code in (401, 403), refused.status_code
    pids = {process.pid for process in ray_processes}
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    dashboard_port = int(dashboard.rsplit(":", 1)[1])
    assert {c.laddr.ip for c in listening if c.laddr.port == dashboard_port} == {"127.0.0.1"}
    # Every port of the Ray it started is on loopback, its metrics endpoint among them, and so is
    # Serve's proxy (this config's host is 127.0.0.1); but not Serve's replicas' inter-deployment gRPC
    # server, which Serve 2.60 binds to [::] whatever the node's address (token auth guards it).
    ray_ports = [c for c in listening if not psutil.Process(c.pid).name().startswith("ray::ServeReplica")]
    assert {c.laddr.ip for c in ray_ports} <= LOOPBACK_ADDRESSES, sorted(c.laddr for c in ray_ports)


@pytest.fixture
def default_dashboard_port_taken() -> Iterator[None]:
    """127.0.0.1:8265 held by something else, as by another Ray on the machine (already so when
    binding fails)."""
    with socket.socket() as sock:
        try:
            sock.bind(RAYS_DEFAULT_DASHBOARD)
            sock.listen()
        except OSError:
            pass
        yield


@pytest.mark.integration
def test_sigterm_stops_the_service_and_every_ray_process_it_started(
    tiny_models, tls_certs, tmp_path, default_dashboard_port_taken
):
    # Over HTTPS (--tls-cert, --tls-key): Serve's proxy serves the certificate; plain HTTP is the
    # session graph's (tests/serve/conftest.py).
    config = yaml.safe_load(local_config_path().read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (application,) = config["applications"]
    application["args"] = {
        "sdxl": {"model": str(tiny_models["sdxl"])},
        "refiner": {"model": str(tiny_models["sdxl-refiner"])},
        "musicgen": {"model": str(tiny_models["musicgen-melody"])},
        "ingress": {"jobs": {"store_path": str(tmp_path / "jobs.db"), "output_dir": str(tmp_path / "out")}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    tls = ["--tls-cert", str(tls_certs.cert), "--tls-key", str(tls_certs.key)]
    printed = tmp_path / "stdout.txt"
    with printed.open("wb") as stdout:
        server = subprocess.Popen(
            [sys.executable, "-m", "leap_ray.cli", "serve", str(tmp_path / "config.yaml"), *tls],
            env=environment,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
    url, trusted = f"https://127.0.0.1:{port}", ssl.create_default_context(cafile=str(tls_certs.ca))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if is_ready(url, verify=trusted):
                break
            time.sleep(1)
        else:
            pytest.fail("leap-ray serve did not become ready")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", timeout=10)  # not without the test CA
        deadline = time.monotonic() + 30
        while f"serving at {url} " not in printed.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"serving at {url} " in printed.read_text()
        # The dashboard it got, printed with the command that reaches it: not the port taken.
        (dashboard,) = re.findall(r"serve status -a (http://127\.0\.0\.1:\d+)\n", printed.read_text())
        assert not dashboard.endswith(":8265")
        descendants = psutil.Process(server.pid).children(recursive=True)
        check_ray_tools_and_exposure(descendants, dashboard)
        names = {process.name() for process in descendants}
        assert len(descendants) >= 3, names  # raylet, GCS, workers, agents...
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(descendants, timeout=10)
        left = [f"{p.pid} {p.name()}" for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert left == []
    finally:
        if server.poll() is None:
            server.kill()


@pytest.fixture
def ray_inits(monkeypatch) -> list[dict]:
    """What start_ray asks of ray.init, call by call (no Ray starts): its options, and the node
    address and single-machine variable Ray would see while starting."""
    import ray

    calls = []

    def init(**options: object) -> SimpleNamespace:
        seen = {"node_ip": ray.util.get_node_ip_address(), "env": os.environ.get(launch.SINGLE_MACHINE_ENV)}
        calls.append({**options, **seen})
        return SimpleNamespace(dashboard_url="127.0.0.1:8266")  # as Ray's context has it: no scheme

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(launch.proxy.CALLBACK_ENV, raising=False)  # start_ray sets it; undone after
    monkeypatch.delenv(launch.SINGLE_MACHINE_ENV, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    return calls


def test_without_an_address_the_service_starts_a_ray_of_its_own(ray_inits):
    # Found by hostile testing: Ray's discovery made `leap-ray serve` join another `ray start`
    # cluster on the machine (its ray_current_cluster file) and deploy into it.
    launch.start_ray(num_cpus=1)
    launch.start_ray(address="ray://head:10001")
    assert [call["address"] for call in ray_inits] == ["local", "ray://head:10001"]


def test_the_ray_it_starts_is_on_loopback_unless_told_to_expose_its_metrics(ray_inits):
    # Found by hostile testing: Ray's metrics endpoint (node and process metrics, the ray_leap_ray_*
    # series; no auth) listened on every interface: ray.init replaces a `_node_ip_address` of
    # 127.0.0.1 with the machine's address, and the endpoint binds loopback only on a loopback node.
    import ray

    machine_address = ray.util.get_node_ip_address()
    launch.start_ray(num_cpus=1)
    launch.start_ray(num_cpus=1, expose_metrics=True)
    launch.start_ray(address="ray://head:10001")
    own, exposed, joined = ray_inits
    assert (own["node_ip"], own["env"], own["dashboard_host"]) == ("127.0.0.1", "0", "127.0.0.1")
    assert (exposed["node_ip"], exposed["env"], exposed["dashboard_host"]) == (
        machine_address,
        None,
        "127.0.0.1",
    )
    assert (joined["node_ip"], joined["env"]) == (machine_address, None)  # the cluster's own setup
    # Nothing else in this process changes: the switch is undone once Ray has started.
    assert ray.util.get_node_ip_address() == machine_address
    assert launch.SINGLE_MACHINE_ENV not in os.environ


def test_it_prints_the_dashboard_the_ray_it_started_got_and_points_serve_status_at_it(ray_inits):
    dashboard = launch.start_ray(num_cpus=1)
    assert dashboard == "http://127.0.0.1:8266"
    message = serving_message(launch.load_config(), dashboard)
    assert "Ray's dashboard: http://127.0.0.1:8266." in message
    assert "  RAY_AUTH_MODE=token serve status -a http://127.0.0.1:8266\n" in message


def test_serve_takes_the_flag_that_exposes_rays_metrics():
    from leap_ray.cli import build_parser

    assert build_parser().parse_args(["serve"]).expose_metrics is False
    assert build_parser().parse_args(["serve", "--expose-metrics"]).expose_metrics is True


def deployment(status: str, message: str = "") -> SimpleNamespace:
    return SimpleNamespace(status=status, message=message)


def applications(status: str, **deployments: SimpleNamespace) -> dict:
    return {"leap_ray": SimpleNamespace(status=status, message="", deployments=deployments)}


WAITING_FOR_A_GPU = "1 replica has taken more than 30s to be scheduled. Resources required: {'GPU': 1}"


def test_while_the_models_start_it_says_which_are_still_starting_in_serves_words(monkeypatch):
    states = applications(
        "DEPLOYING", Ingress=deployment("HEALTHY"), SDXL=deployment("UPDATING", WAITING_FOR_A_GPU)
    )
    monkeypatch.setattr(launch.serve, "status", lambda: SimpleNamespace(applications=states))
    reports, stop = [], threading.Event()

    def report(line: str) -> None:
        reports.append(line)
        stop.set()  # as Ctrl-C would: not running, no error

    assert (
        launch.wait_until_running(launch.load_config(), stop=stop, report=report, report_every_s=0) is False
    )
    (line,) = reports
    assert line.startswith("still starting after ") and f"SDXL: UPDATING ({WAITING_FOR_A_GPU})" in line
    assert "Ingress" not in line
    with pytest.raises(TimeoutError, match=r"not running after 0 s: SDXL: UPDATING \(1 replica"):
        launch.wait_until_running(launch.load_config(), timeout_s=0)


class FakeServe:
    """Serve's controller as leave_cluster sees it: applications that go `polls_to_go` status calls
    after their delete was asked for (never, with None)."""

    def __init__(self, monkeypatch, polls_to_go: int | None = 2, refuse: Exception | None = None) -> None:
        self.apps, self.deleted, self.disconnected = {"leap_ray": True, "theirs": True}, [], []
        self.polls_to_go, self.refuse = polls_to_go, refuse
        monkeypatch.setattr(launch.serve, "delete", self.delete)
        monkeypatch.setattr(launch.serve, "status", self.status)
        monkeypatch.setattr(launch.serve, "shutdown", lambda: pytest.fail("serve.shutdown removes every app"))
        monkeypatch.setattr(launch.ray, "shutdown", lambda: self.disconnected.append(True))
        monkeypatch.setattr(launch.time, "sleep", lambda seconds: None)

    def delete(self, name: str, _blocking: bool = True) -> None:
        assert _blocking is False  # the controller drains replicas on its own; we only watch
        if self.refuse:
            raise self.refuse
        self.deleted.append(name)

    def status(self) -> SimpleNamespace:
        if self.deleted and self.polls_to_go is not None:
            self.polls_to_go -= 1
            if self.polls_to_go <= 0:
                self.apps.pop("leap_ray", None)
        return SimpleNamespace(applications=dict(self.apps))


def test_on_a_cluster_it_joined_it_removes_only_its_own_applications_and_waits_for_them(monkeypatch):
    cluster, reports = FakeServe(monkeypatch), []
    launch.leave_cluster(launch.load_config(), report=reports.append)
    assert cluster.deleted == ["leap_ray"] and cluster.apps == {"theirs": True}
    assert cluster.disconnected == [True] and reports == []


def test_a_removal_that_outlasts_the_wait_is_said_and_ray_is_disconnected(monkeypatch):
    cluster, reports = FakeServe(monkeypatch, polls_to_go=None), []
    launch.leave_cluster(launch.load_config(), timeout_s=0, report=reports.append)
    assert reports == ["still removing leap_ray after 0 s; Serve goes on with it"]
    assert cluster.disconnected == [True]


def test_a_controller_that_refuses_is_one_line_and_ray_is_disconnected(monkeypatch):
    cluster, reports = FakeServe(monkeypatch, refuse=RuntimeError("the controller died")), []
    launch.leave_cluster(launch.load_config(), report=reports.append)
    assert reports == ["could not remove leap_ray from the cluster: the controller died"]
    assert cluster.disconnected == [True]


def test_a_cluster_whose_serve_runs_applications_is_left_as_it_was(monkeypatch):
    cluster = FakeServe(monkeypatch)
    with pytest.raises(launch.ClusterInUse) as refused:
        launch.check_cluster_is_free()
    assert refused.value.applications == ["leap_ray", "theirs"]
    cluster.apps.clear()
    launch.check_cluster_is_free()  # an empty Serve: nothing to replace


def test_a_serve_status_that_fails_is_one_line(monkeypatch):
    def dying() -> None:
        raise RuntimeError("The actor died unexpectedly before finishing this task")

    monkeypatch.setattr(launch.serve, "status", dying)
    with pytest.raises(RuntimeError, match=r"^cannot read the cluster's Serve status: The actor died"):
        launch.check_cluster_is_free()


@pytest.mark.parametrize(
    ("address", "variable", "joins"),
    [(None, "", False), (None, "head:6379", True), ("head:6379", None, True), (None, None, False)],
)
def test_an_address_or_a_non_empty_ray_address_joins_a_cluster(monkeypatch, address, variable, joins):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if variable is not None:
        monkeypatch.setenv("RAY_ADDRESS", variable)
    assert launch.joins_cluster(address) is joins


def test_an_interrupted_stop_still_ends_every_ray_process_it_started(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def interrupted() -> None:
        raise KeyboardInterrupt  # a second Ctrl-C while Serve drains

    monkeypatch.setattr(launch.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(launch.serve, "shutdown", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch.stop_local_ray(grace_s=5)
        assert child.wait(timeout=10) is not None
    finally:
        child.kill()


def test_a_second_signal_stops_the_waiting_and_a_third_is_ignored():
    from leap_ray.cli import stop_on_signals

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    try:
        stop_on_signals(stop)
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGTERM, None)
        handler(signal.SIGINT, None)  # a third: ignored, so the interrupted stop ends what it started
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


@pytest.fixture
def fake_launch(monkeypatch) -> Iterator[dict[str, list]]:
    """leap-ray serve's steps, recorded instead of run (no Ray starts); the signal handlers it
    installs are put back after."""
    calls: dict[str, list] = {"stopped": [], "left": [], "deployed": [], "disconnected": []}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(launch, "start_ray", lambda **options: "http://127.0.0.1:8265")
    monkeypatch.setattr(launch, "check_cluster_is_free", lambda: None)
    monkeypatch.setattr(
        launch, "deploy", lambda config: calls["deployed"].append(config.applications[0].name)
    )
    monkeypatch.setattr(launch, "stop_local_ray", lambda: calls["stopped"].append(True))
    monkeypatch.setattr(launch, "disconnect", lambda: calls["disconnected"].append(True))
    monkeypatch.setattr(
        launch, "leave_cluster", lambda config: calls["left"].append(config.applications[0].name)
    )
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield calls
    for signum, previous in saved.items():
        signal.signal(signum, previous)


def test_a_failed_deployment_is_one_line_and_exit_1_and_only_its_apps_leave_the_cluster(
    fake_launch, monkeypatch, capsys
):
    def failed(*args: object, **options: object) -> bool:
        raise RuntimeError("deployment failed: leap_ray: SDXL replica raised")

    monkeypatch.setattr(launch, "wait_until_running", failed)
    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--address", "head:6379"])
    assert exit_status.value.code == 1
    assert capsys.readouterr().err.strip().endswith("deployment failed: leap_ray: SDXL replica raised")
    assert fake_launch == {"stopped": [], "left": ["leap_ray"], "deployed": ["leap_ray"], "disconnected": []}


def test_a_cluster_already_serving_is_refused_unless_replace_is_given(fake_launch, monkeypatch, capsys):
    def in_use() -> None:
        raise launch.ClusterInUse(["leap_ray", "theirs"])

    monkeypatch.setattr(launch, "check_cluster_is_free", in_use)
    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--address", "head:6379"])
    assert exit_status.value.code == 2
    error = capsys.readouterr().err
    assert "the cluster's Serve already runs leap_ray, theirs" in error and "--replace" in error
    # Not deployed, nothing removed: only disconnected.
    assert fake_launch == {"stopped": [], "left": [], "deployed": [], "disconnected": [True]}
    monkeypatch.setattr(launch, "wait_until_running", lambda *args, **options: False)  # then Ctrl-C
    main(["serve", "--address", "head:6379", "--replace"])
    assert fake_launch["left"] == ["leap_ray"] and fake_launch["deployed"] == ["leap_ray"]


def test_replace_without_a_cluster_is_refused_before_any_ray_starts(fake_launch, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--replace"])
    assert (
        exit_status.value.code == 2
        and "--replace is for a cluster joined with --address" in capsys.readouterr().err
    )
    assert fake_launch == {"stopped": [], "left": [], "deployed": [], "disconnected": []}


def test_stopped_while_ray_starts_it_deploys_nothing_and_ends_its_ray(fake_launch, monkeypatch):
    def interrupted_start(**options: object) -> str:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while ray.init runs
        return "http://127.0.0.1:8265"

    monkeypatch.setattr(launch, "start_ray", interrupted_start)
    main(["serve"])
    assert fake_launch == {"stopped": [True], "left": [], "deployed": [], "disconnected": []}


def test_a_second_ctrl_c_while_ray_starts_still_ends_its_ray(fake_launch, monkeypatch, capsys):
    def twice_interrupted_start(**options: object) -> str:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # raises KeyboardInterrupt here, inside the start
        return "never"

    monkeypatch.setattr(launch, "start_ray", twice_interrupted_start)
    with pytest.raises(SystemExit) as exit_status:
        main(["serve"])
    assert exit_status.value.code == 130
    assert fake_launch["stopped"] == [True] and fake_launch["deployed"] == []


def test_a_cluster_whose_serve_status_fails_is_one_line_and_left_connected_no_more(
    fake_launch, monkeypatch, capsys
):
    def unreadable() -> None:
        raise RuntimeError("cannot read the cluster's Serve status: the controller died")

    monkeypatch.setattr(launch, "check_cluster_is_free", unreadable)
    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--address", "head:6379"])
    assert exit_status.value.code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("cannot read the cluster's Serve status: the controller died")
    )
    assert fake_launch == {"stopped": [], "left": [], "deployed": [], "disconnected": [True]}


def test_the_ready_timeout_reaches_the_wait_and_its_own_ray_is_stopped(fake_launch, monkeypatch, capsys):
    def timed_out(config: object, timeout_s: float | None, *args: object, **options: object) -> bool:
        raise TimeoutError(f"not running after {timeout_s:.0f} s: SDXL: UPDATING")

    monkeypatch.setattr(launch, "wait_until_running", timed_out)
    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--ready-timeout", "90"])
    assert exit_status.value.code == 1
    captured = capsys.readouterr()
    assert "not running after 90 s: SDXL: UPDATING" in captured.err
    assert "Starting the models (the tiny ones are built on first use)..." in captured.out
    assert fake_launch == {"stopped": [True], "left": [], "deployed": ["leap_ray"], "disconnected": []}


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf", "soon"])
def test_a_ready_timeout_must_be_seconds_above_0(seconds, capsys):
    with pytest.raises(SystemExit) as exit_status:
        build_parser().parse_args(["serve", "--ready-timeout", seconds])
    assert exit_status.value.code == 2 and "--ready-timeout" in capsys.readouterr().err


def test_the_tiny_note_is_said_only_for_tiny_models():
    assert uses_tiny_models(launch.load_config())
    assert not uses_tiny_models(launch.load_config(ROOT / "serve_config.yaml"))


def test_a_joined_clusters_dashboard_is_said_to_be_the_heads_view():
    message = serving_message(launch.load_config(), "http://127.0.0.1:8265", joined=True)
    assert "The cluster's dashboard, as its head sees it: http://127.0.0.1:8265. On the head:" in message
