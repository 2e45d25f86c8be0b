"""What the deploy/ tests share: the files of the operator's kit, parsed, and the command-line tools
that check them (Debian's prometheus package brings promtool and prometheus; kubectl renders the
KubeRay manifest offline). Without promtool or prometheus these tests skip here and fail in CI, where
`make test` installs them as root; kubectl is no Debian package, so its tests skip wherever it is
missing."""

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
RAYSERVICE = DEPLOY / "kuberay" / "rayservice.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
# The user Ray's images run as, and its group (ray-project/ray's docker/base-deps/Dockerfile: RAY_UID=1000,
# RAY_GID=100, the group `users`): the owner of what the image writes, on its cache volume too.
RAY_USER, RAY_UID, RAY_GID = "ray", 1000, 100
# Where the image keeps the models' downloads and the compile cache (HF_HOME's and ~/.cache's default).
IMAGE_CACHE = "/home/ray/.cache"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def serve_pin(package: str) -> str:
    """The version pyproject's serve extra pins `package` to (`ray[serve]==2.60.0` -> '2.60.0')."""
    for requirement in pyproject()["project"]["optional-dependencies"]["serve"]:
        name, _, version = requirement.partition("==")
        if name.split("[")[0] == package:
            return version
    raise LookupError(f"{package} is not pinned in the serve extra")


def rayservice() -> dict[str, Any]:
    return yaml.safe_load(RAYSERVICE.read_text())


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of the RayService's head and worker groups."""
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


PROMETHEUS_PACKAGE = "Debian's prometheus package has it; `make test` installs it when run as root"


def installed(tool: str, where: str = PROMETHEUS_PACKAGE, *, required_in_ci: bool = True) -> str:
    """The tool's path, or the test skipped without it (failed in CI, where `make test` installs it)."""
    path = shutil.which(tool)
    if path is None:
        if required_in_ci and os.environ.get("CI"):
            pytest.fail(f"{tool} is missing ({where})")
        pytest.skip(f"{tool} is not installed ({where})")
    return path


@pytest.fixture
def promtool() -> str:
    return installed("promtool")


@pytest.fixture
def prometheus() -> str:
    return installed("prometheus")


@pytest.fixture
def kubectl() -> str:
    return installed("kubectl", "Kubernetes' client; no Debian package", required_in_ci=False)
