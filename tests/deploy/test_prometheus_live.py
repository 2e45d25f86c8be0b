"""A real Prometheus, run with deploy/prometheus's config, scrapes the tests' Ray after traffic: the
service's series are there, every alert rule is loaded, and each rule's expression evaluates without
error on what was scraped. The config differs only where this machine must: a data folder and a
listen address of the test's, and the discovery file. The tests' Ray runs without its dashboard,
whose process writes that file; Ray's own writer (the dashboard's PrometheusServiceDiscoveryWriter)
writes it here once, into the test's folder, naming the same nodes' metrics endpoints."""

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import ray
import yaml
from ray._private.metrics_agent import PrometheusServiceDiscoveryWriter

from leap_ray.errors import LeapRayError
from tests.conftest import free_port
from tests.helpers import SMALL

from .conftest import PROMETHEUS_CONFIG, alert_rules

DEADLINE_S = 180  # Ray exports every few seconds, Prometheus scrapes and evaluates every 10 s
# Ours that the traffic below makes, beside every series the alerts read.
OURS = {
    "ray_leap_ray_requests_total",
    "ray_leap_ray_images_generated_total",
    "ray_leap_ray_audio_seconds_generated_total",
    "ray_leap_ray_step_seconds_bucket",
    "ray_leap_ray_jobs_total",
    "ray_leap_ray_oldest_queued_job_seconds",
}

T = TypeVar("T")


def until(check: Callable[[], T], done: Callable[[T], bool] = bool, what: str = "") -> T:
    """Polls `check` until `done` holds for its answer; fails naming `what` and the last answer."""
    deadline = time.monotonic() + DEADLINE_S
    while not done(answer := check()) and time.monotonic() < deadline:
        time.sleep(1)
    assert done(answer), f"{what}: {answer!r}"
    return answer


def discovery_file(folder: Path) -> Path:
    writer = PrometheusServiceDiscoveryWriter(ray.get_runtime_context().gcs_address, str(folder), str(folder))
    writer.write()
    return Path(writer.get_target_file_name())


@pytest.fixture
def prometheus_api(prometheus, graph, tmp_path) -> Iterator[httpx.Client]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    (discovery,) = config["scrape_configs"][0]["file_sd_configs"]
    discovery["files"] = [str(discovery_file(tmp_path))]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            until(lambda: ready(api), what="Prometheus ready")
            yield api
    finally:
        process.terminate()
        process.wait(timeout=30)


def ready(api: httpx.Client) -> bool:
    try:
        return api.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def query(api: httpx.Client, expression: str) -> dict[str, Any]:
    return api.get("/api/v1/query", params={"query": expression}).json()


def send_traffic(client: httpx.Client) -> None:
    assert client.post("/v1/sdxl", json={"prompt": "a", "seed": 1, **SMALL}).status_code == 200
    assert client.post("/v1/sdxl", json={"prompt": "a", "width": 7}).status_code == 422
    assert client.post("/v1/musicgen", json={"prompt": "a", "duration": 1}).status_code == 200
    job = client.post("/v1/jobs", json={"service": "sdxl", "input": {"prompt": "a", **SMALL}}).json()
    status = until(
        lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"], "succeeded".__eq__, "the job"
    )
    assert status == "succeeded"


def test_prometheus_scrapes_the_service_and_evaluates_every_alert(client, prometheus_api):
    send_traffic(client)
    rules = alert_rules()
    wanted = OURS | {name for rule in rules for name in re.findall(r"\bray_[a-z_]+", rule["expr"])}
    pattern = "|".join(sorted(wanted))

    def missing() -> set[str]:
        found = query(prometheus_api, f'count by (__name__) ({{__name__=~"{pattern}"}})')["data"]["result"]
        return wanted - {series["metric"]["__name__"] for series in found}

    until(missing, lambda absent: not absent, "series not scraped")

    def alert_rules_loaded() -> list[dict[str, Any]]:
        groups = prometheus_api.get("/api/v1/rules", params={"type": "alert"}).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def evaluated(loaded: list[dict[str, Any]]) -> bool:
        # A rule not yet evaluated shows Go's zero time.
        return bool(loaded) and not any(rule["lastEvaluation"].startswith("0001-") for rule in loaded)

    loaded = until(alert_rules_loaded, evaluated, "alert rules evaluated")
    assert sorted(rule["name"] for rule in loaded) == sorted(rule["alert"] for rule in rules)
    assert {rule["name"]: (rule["health"], rule.get("lastError", "")) for rule in loaded} == {
        rule["alert"]: ("ok", "") for rule in rules
    }
    for rule in rules:
        assert query(prometheus_api, rule["expr"])["status"] == "success", rule["alert"]
        check_selectors(prometheus_api, rule)


# A selector's matcher: label, operator, value (`status_code=~"5.."`).
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def outcomes() -> set[str]:
    """The values of leap_ray_requests_total's outcome: ok, or an error's type."""
    classes, found = [LeapRayError], {"ok"}
    while classes:
        error = classes.pop()
        found.add(error.error_type)
        classes.extend(error.__subclasses__())
    return found


# Matchers the traffic above cannot meet (no 5xx, no model at capacity): left out of the query, their
# label must still be on the series, holding values of the kind the matcher names.
RARE: dict[tuple[str, str, str], Callable[[str], bool]] = {
    ("status_code", "=~", "5.."): lambda value: re.fullmatch(r"\d{3}", value) is not None,
    ("outcome", "=", "overloaded_error"): lambda value: value in outcomes(),
}


def selectors(expression: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each series selector of a PromQL expression: its metric and its matchers."""
    found = re.findall(r"\b(ray_[a-z_]+)(?:\{([^}]*)\})?", expression)
    return [(metric, MATCHER.findall(matchers)) for metric, matchers in found]


def check_selectors(api: httpx.Client, rule: dict[str, Any]) -> None:
    """Each selector of the rule finds series, and they carry every label the rule groups by or matches
    on: a label renamed (by Ray, or by us) leaves a rule that evaluates without error and never fires."""
    grouped = {label.strip() for by in re.findall(r"by \(([^)]*)\)", rule["expr"]) for label in by.split(",")}
    for metric, matchers in selectors(rule["expr"]):
        asked = [matcher for matcher in matchers if matcher not in RARE]
        selector = metric + "{" + ", ".join(f'{label}{op}"{value}"' for label, op, value in asked) + "}"
        series = [result["metric"] for result in query(api, selector)["data"]["result"]]
        assert series, f"{rule['alert']}: {selector} finds nothing"
        for labels in series:
            assert grouped | {label for label, _, _ in matchers} <= labels.keys(), (rule["alert"], labels)
            for label, op, value in set(matchers) & RARE.keys():
                assert RARE[label, op, value](labels[label]), (rule["alert"], label, labels[label])
                assert op != "=" or RARE[label, op, value](value), (rule["alert"], label, value)
