"""`leap-ray serve` in the foreground: it serves, Ray's own `serve status` and `serve config` work
against it, Ray listens on loopback with its token auth on, and SIGTERM stops it leaving no process
behind."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from leap_ray.serve.launch import is_ready, local_config_path

pytestmark = pytest.mark.integration
DASHBOARD = "http://127.0.0.1:8265"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_cli(*args: str) -> str:
    """Ray's `serve` command as the README tells operators to type it (it finds the dashboard on
    127.0.0.1:8265, and the token in ~/.ray/auth_token when told that Ray's token auth is on)."""
    serve = Path(sys.executable).with_name("serve")
    environment = {**os.environ, "RAY_AUTH_MODE": "token"}
    done = subprocess.run([str(serve), *args], capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_ray_tools_and_exposure(ray_processes: list[psutil.Process]) -> None:
    status = yaml.safe_load(serve_cli("status"))
    application = status["applications"]["leap_ray"]
    assert application["status"] == "RUNNING"
    assert set(application["deployments"]) == {"Ingress", "SDXL", "Refiner", "MusicGen"}
    (config,) = yaml.safe_load_all(serve_cli("config"))
    assert config["import_path"] == "leap_ray.serve.app:build_app"
    # Ray's token auth is on: without the token (which the CLI read from ~/.ray/auth_token) it refuses.
    refused = httpx.get(f"{DASHBOARD}/api/serve/applications/", timeout=10)
    assert refused.status_code in (401, 403), refused.status_code
    pids = {process.pid for process in ray_processes}
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert {c.laddr.ip for c in listening if c.laddr.port == 8265} == {"127.0.0.1"}


def test_sigterm_stops_the_service_and_every_ray_process_it_started(tiny_models, tmp_path):
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
    server = subprocess.Popen(
        [sys.executable, "-m", "leap_ray.cli", "serve", str(tmp_path / "config.yaml")],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if is_ready(f"http://127.0.0.1:{port}"):
                break
            time.sleep(1)
        else:
            pytest.fail("leap-ray serve did not become ready")
        descendants = psutil.Process(server.pid).children(recursive=True)
        check_ray_tools_and_exposure(descendants)
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


def test_without_an_address_the_service_starts_a_ray_of_its_own(monkeypatch):
    # Found by hostile testing: Ray's discovery made `leap-ray serve` join another `ray start`
    # cluster on the machine (its ray_current_cluster file) and deploy into it.
    import ray

    from leap_ray.serve import launch

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(launch.proxy.CALLBACK_ENV, raising=False)  # start_ray sets it; undone after
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    launch.start_ray(num_cpus=1)
    launch.start_ray(address="ray://head:10001")
    assert [call["address"] for call in calls] == ["local", "ray://head:10001"]
