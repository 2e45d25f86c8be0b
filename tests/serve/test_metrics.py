"""The service's own metrics reach Ray's Prometheus endpoint after traffic, with Serve's tags; the
Grafana dashboard under deploy/ asks only for series that exist."""

import json
import re
import time
from pathlib import Path

import httpx
import ray

from leap_ray.serve import metrics
from tests.helpers import SMALL

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "leap_ray.json"
EXPECTED = [
    'ray_leap_ray_requests_total{.*outcome="ok".*service="sdxl"',
    'ray_leap_ray_requests_total{.*outcome="invalid_request_error".*service="sdxl"',
    'ray_leap_ray_requests_total{.*outcome="ok".*service="musicgen"',
    "ray_leap_ray_images_generated_total{",
    "ray_leap_ray_audio_seconds_generated_total{",
    'ray_leap_ray_first_progress_seconds_bucket{.*service="sdxl"',
    'ray_leap_ray_batch_load_bucket{.*deployment="SDXL"',
    'ray_leap_ray_step_seconds_bucket{.*deployment="MusicGen"',
    'ray_leap_ray_queue_wait_seconds_bucket{.*deployment="SDXL"',
    'ray_leap_ray_jobs_total{.*status="succeeded"',
    "ray_leap_ray_oldest_queued_job_seconds{",
]


def test_the_services_metrics_are_scraped_after_traffic(graph, client):
    assert client.post("/v1/sdxl", json={"prompt": "a", "seed": 1, **SMALL}).status_code == 200
    assert client.post("/v1/sdxl", json={"prompt": "a", "width": 7}).status_code == 422
    assert client.post("/v1/musicgen", json={"prompt": "a", "duration": 1}).status_code == 200
    streamed = client.post("/v1/sdxl", json={"prompt": "a", **SMALL}, headers={"Accept": "text/event-stream"})
    assert "event: result" in streamed.text
    job = client.post("/v1/jobs", json={"service": "sdxl", "input": {"prompt": "a", **SMALL}}).json()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.2)
    port = ray._private.worker.global_worker.node.metrics_export_port
    missing = EXPECTED
    while missing and time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        missing = [series for series in EXPECTED if not re.search(series, text)]
        time.sleep(1)
    assert missing == []


def test_the_dashboard_asks_only_for_series_that_exist():
    ours = {function().info["name"] for function in vars(metrics).values() if hasattr(function, "cache_info")}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 8
    names = {name for expr in expressions for name in re.findall(r"\bray_[a-z_]+", expr)}
    unknown = {
        name
        for name in names
        if not name.startswith("ray_serve_")
        and re.sub(r"_(bucket|sum|count)$", "", name.removeprefix("ray_")) not in ours
    }
    assert unknown == set()
