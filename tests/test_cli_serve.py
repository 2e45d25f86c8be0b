"""`leap-ray serve` in the foreground: it serves, and SIGTERM stops it leaving no process behind."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import yaml

from leap_ray.serve.launch import local_config_path

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_stops_the_service_and_every_ray_process_it_started(tiny_models, tmp_path):
    config = yaml.safe_load(local_config_path().read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (application,) = config["applications"]
    application["args"] = {
        "sdxl": {"model": str(tiny_models["sdxl"])},
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
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("leap-ray serve did not become ready")
        descendants = psutil.Process(server.pid).children(recursive=True)
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
