"""deploy/prometheus, checked by Prometheus's own promtool: the config and the alert rules are valid,
and each alert fires on the series that should raise it and stays quiet otherwise (alerts_test.yml).
The rules' series are ours or Serve's; tests/deploy/test_prometheus_live.py finds them all in a real
Prometheus scraping a real Ray."""

import re
import subprocess

import yaml
from ray._private import ray_constants

from leap_ray.serve import metrics

from .conftest import ALERTS, ALERTS_TEST, PROMETHEUS_CONFIG, alert_rules


def check(promtool: str, *arguments: str) -> None:
    result = subprocess.run([promtool, *arguments], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_config_is_valid(promtool):
    check(promtool, "check", "config", str(PROMETHEUS_CONFIG))


def test_the_alert_rules_are_valid(promtool):
    check(promtool, "check", "rules", str(ALERTS))


def test_each_alert_fires_and_stays_quiet_as_its_unit_tests_say(promtool):
    check(promtool, "test", "rules", str(ALERTS_TEST))


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not():
    cases = [
        case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == rule["alert"]}
        assert outcomes == {True, False}, rule["alert"]


def test_prometheus_finds_rays_nodes_in_the_file_ray_writes():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["file_sd_configs"]
    # The head's default temporary folder, where Ray links the file it writes for its session.
    assert discovery["files"] == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    assert config["rule_files"] == [ALERTS.name]


def test_the_alerts_ask_only_for_our_series_or_serves():
    ours = {function().info["name"] for function in vars(metrics).values() if hasattr(function, "cache_info")}
    names = {name for rule in alert_rules() for name in re.findall(r"\bray_[a-z_]+", rule["expr"])}
    unknown = {
        name for name in names if not name.startswith("ray_serve_") and name.removeprefix("ray_") not in ours
    }
    assert unknown == set()
