"""README's Deploying section, tested as written: each command that can run here runs verbatim from
the repository root; for those that need a Docker daemon, a cluster or a long-running server, the
paths they name exist and the image they name is the manifest's, and a `docker run` line serves on
the container's interfaces (where `-p` reaches) and asks for GPUs only if its config does. A command
the test knows neither way fails it, so a new one is not left unchecked."""

import re
import shlex
import subprocess

import pytest
import yaml

from .conftest import DOCKERFILE, IMAGE_CACHE, RAYSERVICE, ROOT, containers, rayservice

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


def volumes(words: list[str]) -> list[tuple[str, str]]:
    """docker's `-v source:target[:options]`: (source, target); a source without "/" is a named volume."""
    return [tuple(words[i + 1].split(":")[:2]) for i, word in enumerate(words[:-1]) if word == "-v"]  # type: ignore[misc]


def checkout_paths(words: list[str]) -> list[str]:
    """The paths a command names in the checkout: relative ones (or under "$PWD", where the command is
    typed), and the sources of bind mounts (an absolute, home or other $VARIABLE path is the machine's,
    a named volume docker's)."""
    mount_specs = {i + 1 for i, word in enumerate(words) if word == "-v"}
    candidates = [word for i, word in enumerate(words) if i not in mount_specs]
    candidates += [source for source, _ in volumes(words)]
    candidates = [word.removeprefix("$PWD/") for word in candidates]  # the checkout, where it is typed
    return [
        word.removeprefix("./") for word in candidates if "/" in word and not word.startswith(("/", "~", "$"))
    ]


@pytest.mark.parametrize("command", [c for c in deploying_commands() if starts_with(c, CHECKED)])
def test_the_command_names_files_that_exist_and_the_manifests_image(command):
    words = named(command)
    paths = checkout_paths(words)
    assert [path for path in paths if not (ROOT / path).exists()] == []
    (image,) = {container["image"] for container in containers(rayservice())}
    images = [word for word in words if word.startswith("leap-ray:")]
    assert images in ([], [image])
    assert paths or images, f"{command} names nothing to check"
    if command.startswith("docker build"):
        # From the root, as the Dockerfile's COPY lines expect, tagged as the manifest runs it.
        assert words[words.index("-f") + 1] == str(DOCKERFILE.relative_to(ROOT)) and words[-1] == "."
        assert images == [image]
    if command.startswith("docker run"):
        # The cache where the image's user keeps it, /dev/shm over Ray's object store (256 MiB), and
        # a mounted config is the one the command serves.
        assert ("leap-ray-cache", IMAGE_CACHE) in volumes(words)
        assert "--shm-size" in command and "-p" in words
        served = words[words.index(image) + 1 :]
        if served:
            assert served[:2] == ["leap-ray", "serve"]
            assert served[2] in {target for _, target in volumes(words)}
    if command.startswith("prometheus"):
        # Its data outside the checkout (by default ./data/, wherever it is started).
        assert any(word.startswith("--storage.tsdb.path=") for word in shlex.split(command))
    if command.startswith("kubectl apply"):
        assert (ROOT / words[words.index("-k") + 1] / "kustomization.yaml").exists()
        assert words[words.index("-k") + 1] == str(RAYSERVICE.parent.relative_to(ROOT))


# The image's own command serves this (tests/deploy/test_dockerfile.py checks its CMD and COPY).
IMAGE_CONFIG = ROOT / "serve_config.yaml"
GPU_FLAGS = ("--gpus", "--runtime=nvidia", "--device=nvidia.com/gpu")


def option(words: list[str], flag: str) -> str | None:
    """The value of `flag` among words (`--host 0.0.0.0` or `--host=0.0.0.0`), or None."""
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def served_config(words: list[str], image: str) -> tuple[dict, list[str]]:
    """What a `docker run` line serves: the config file (the image's own, or the one it mounts, read
    from the checkout) and the `leap-ray serve` words after the image."""
    served = words[words.index(image) + 1 :]
    if not served:
        return yaml.safe_load(IMAGE_CONFIG.read_text()), []
    (source,) = [source for source, target in volumes(words) if target == served[2]]
    return yaml.safe_load((ROOT / source.removeprefix("$PWD/").removeprefix("./")).read_text()), served


@pytest.mark.parametrize("command", [c for c in deploying_commands() if starts_with(c, ["docker run"])])
def test_a_docker_run_listens_on_every_interface_and_asks_for_gpus_only_if_its_config_does(command):
    # In a container, 127.0.0.1 is the container's own loopback: `-p` publishes a port nobody answers.
    words = shlex.split(command, comments=True)
    (image,) = {container["image"] for container in containers(rayservice())}
    config, served = served_config(words, image)
    options = words[: words.index(image)]
    assert (option(served, "--host") or config["http_options"]["host"]) == "0.0.0.0"
    port = option(served, "--port") or config["http_options"]["port"]
    assert (option(options, "-p") or "").endswith(f":{port}")  # the port it serves is the one published
    # A GPU flag fails on a machine without NVIDIA's runtime: only where a replica needs a GPU.
    wants_gpus = any(
        deployment.get("ray_actor_options", {}).get("num_gpus", 0) > 0
        for application in config["applications"]
        for deployment in application.get("deployments", [])
    )
    asks_for_gpus = any(word.startswith(GPU_FLAGS) for word in options)
    assert asks_for_gpus == wants_gpus
