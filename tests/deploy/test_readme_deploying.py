"""README's Deploying section, tested as written: each command that can run here runs verbatim from
the repository root; for those that need a Docker daemon, a cluster or a long-running server, the
paths they name exist and the image they name is the manifest's. A command the test knows neither
way fails it, so a new one is not left unchecked."""

import re
import shlex
import subprocess

import pytest

from .conftest import DOCKERFILE, RAYSERVICE, ROOT, containers, rayservice

# The first words of the commands that run here, and the fixture that provides the tool (or None).
RUN_HERE = {"promtool": "promtool", "kubectl kustomize": "kubectl", ".venv/bin/python": None}
# What needs a Docker daemon, a cluster, or runs as a server: checked without running.
CHECKED = ("docker build", "docker run", "kubectl apply", "prometheus")


def deploying_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deploying\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def starts_with(command: str, prefixes: tuple[str, ...] | list[str]) -> str | None:
    return next(
        (prefix for prefix in prefixes if command == prefix or command.startswith(prefix + " ")), None
    )


def test_the_section_has_every_kind_of_command():
    commands = deploying_commands()
    assert [command for command in commands if not starts_with(command, [*RUN_HERE, *CHECKED])] == []
    assert {starts_with(command, [*RUN_HERE, *CHECKED]) for command in commands} == {*RUN_HERE, *CHECKED}


@pytest.mark.parametrize("command", [c for c in deploying_commands() if starts_with(c, list(RUN_HERE))])
def test_the_command_runs_as_written(command, request):
    tool = RUN_HERE[starts_with(command, list(RUN_HERE))]
    if tool:
        request.getfixturevalue(tool)  # skipped (or failed in CI) without it
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def named(command: str) -> list[str]:
    """The words of a command, and the values of its --flag=value options."""
    return [word.split("=", 1)[-1] for word in shlex.split(command, comments=True)]


@pytest.mark.parametrize("command", [c for c in deploying_commands() if starts_with(c, CHECKED)])
def test_the_command_names_files_that_exist_and_the_manifests_image(command):
    words = named(command)
    paths = [word for word in words if "/" in word and not word.startswith("/")]
    assert [path for path in paths if not (ROOT / path).exists()] == []
    (image,) = {container["image"] for container in containers(rayservice())}
    images = [word for word in words if word.startswith("leap-ray:")]
    assert images in ([], [image])
    assert paths or images, f"{command} names nothing to check"
    if command.startswith("docker build"):
        # From the root, as the Dockerfile's COPY lines expect, tagged as the manifest runs it.
        assert words[words.index("-f") + 1] == str(DOCKERFILE.relative_to(ROOT)) and words[-1] == "."
        assert images == [image]
    if command.startswith("kubectl apply"):
        assert (ROOT / words[words.index("-k") + 1] / "kustomization.yaml").exists()
        assert words[words.index("-k") + 1] == str(RAYSERVICE.parent.relative_to(ROOT))
