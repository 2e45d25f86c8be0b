"""deploy/Dockerfile, checked where no Docker daemon runs: its pins are pyproject's, it installs the
package as the Makefile does, it sets Serve's proxy callback, and it copies files that exist and that
its ignore file leaves in the build context."""

import re
import shlex
from pathlib import Path

from leap_ray.serve import proxy

from .conftest import DOCKERFILE, IMAGE_CACHE, RAY_UID, RAY_USER, ROOT, serve_pin

# BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile, before the context root's .dockerignore.
IGNORE_FILE = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
# Flags that change only how pip runs, not what it installs.
QUIET_FLAGS = {"--quiet", "-q", "--no-cache-dir"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    return [
        (keyword.upper(), arguments.strip())
        for keyword, _, arguments in (
            line.strip().partition(" ") for line in joined.splitlines() if line.strip()
        )
    ]


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def arguments() -> dict[str, str]:
    """The Dockerfile's ARG defaults."""
    return dict(value.split("=", 1) for keyword, value in dockerfile() if keyword == "ARG" and "=" in value)


def expand(text: str) -> str:
    for name, value in arguments().items():
        text = text.replace(f"${{{name}}}", value)
    return text


def pip_installs(commands: list[str]) -> list[tuple[frozenset[str], tuple[str, ...]]]:
    """Each `pip install` among shell commands: (the flags that change what it installs, its arguments)."""
    installs = []
    for command in commands:
        for part in command.split("&&"):
            words = shlex.split(part)
            if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                flags = frozenset(
                    word for word in words[2:] if word.startswith("-") and word not in QUIET_FLAGS
                )
                installs.append((flags, tuple(word for word in words[2:] if word not in QUIET_FLAGS)))
    return installs


def dockerfile_installs() -> list[tuple[frozenset[str], tuple[str, ...]]]:
    return pip_installs([expand(value) for keyword, value in dockerfile() if keyword == "RUN"])


def makefile_installs() -> list[tuple[frozenset[str], tuple[str, ...]]]:
    recipe = [line.strip() for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line]
    return pip_installs([line.replace("$(BIN)/", "") for line in recipe])


def extras(requirement: str) -> set[str]:
    """`.[serve,test]` -> {'serve', 'test'}"""
    found = re.search(r"\[([^\]]*)\]", requirement)
    return set(found.group(1).split(",")) if found else set()


def package_installs(installs: list[tuple[frozenset[str], tuple[str, ...]]]) -> list[str]:
    """The installs of this package (a requirement with extras), as opposed to torch's and the watermark's."""
    return [word for _, words in installs for word in words if extras(word)]


def test_the_base_image_is_rays_own_at_pyprojects_ray_pin_and_python():
    (base,) = [expand(value) for keyword, value in dockerfile() if keyword == "FROM"]
    image, _, tag = base.partition(":")
    ray_version, python, cuda = tag.split("-")
    assert image == "rayproject/ray"
    assert ray_version == serve_pin("ray")
    assert python == "py311"  # pyproject's requires-python is >=3.11, and Ray's images come per Python
    assert re.fullmatch(r"cu1\d\d", cuda)


def test_torch_is_pyprojects_pin_from_pytorchs_index_for_the_images_cuda():
    (torch_install,) = [words for _, words in dockerfile_installs() if words[0].startswith("torch==")]
    assert torch_install[0] == f"torch=={serve_pin('torch')}"
    index = torch_install[torch_install.index("--index-url") + 1]
    assert index == f"https://download.pytorch.org/whl/{arguments()['CUDA']}"


def test_the_package_and_the_watermark_install_as_the_makefile_installs_them():
    ours, makes = dockerfile_installs(), makefile_installs()
    # The image serves: the extras of the Makefile's install for serving (`make serve`), its first.
    (package,) = package_installs(ours)
    assert extras(package) == extras(package_installs(makes)[0]) == {"serve"}
    watermark = [(flags, words[-1]) for flags, words in makes if "--no-deps" in flags]
    assert watermark == [(frozenset({"--no-deps"}), "invisible-watermark==0.2.0")]
    assert [(flags, words[-1]) for flags, words in ours if "--no-deps" in flags] == watermark
    # As in the Makefile: torch first (the package's pin is then met by the CUDA build), the watermark last.
    order = [words[-1] if "--no-deps" in flags else words[0] for flags, words in ours]
    assert order == [f"torch=={serve_pin('torch')}", package, "invisible-watermark==0.2.0"]


def test_serves_proxy_callback_is_set_for_every_ray_process_of_the_image():
    environment = [value for keyword, value in dockerfile() if keyword == "ENV"]
    assert environment == [f"{proxy.CALLBACK_ENV}={proxy.CALLBACK}"]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, its --chown dropped."""
    found = []
    for keyword, value in dockerfile():
        if keyword == "COPY":
            words = [word for word in shlex.split(value) if not word.startswith("--")]
            found.append((words[:-1], words[-1]))
    return found


def ignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore line as Docker reads it: `*` within one path segment, `**/` any folders before."""
    parts = re.split(r"(\*\*/|\*)", pattern.strip("/"))
    translated = {"**/": "(.*/)?", "*": "[^/]*"}
    return re.compile("".join(translated.get(part, re.escape(part)) for part in parts))


def ignored(path: str) -> bool:
    """Whether the build context leaves the path out: it, or a folder above it, matches a line."""
    lines = IGNORE_FILE.read_text().splitlines()
    patterns = [ignore_pattern(line.strip()) for line in lines if line.strip() and not line.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    return any(pattern.fullmatch(prefix) for pattern in patterns for prefix in prefixes)


def test_every_copied_file_exists_and_is_in_the_build_context():
    sources = [source for sources, _ in copies() for source in sources]
    assert {"pyproject.toml", "README.md", "leap_ray", "serve_config.yaml"} <= set(sources)
    assert [source for source in sources if not (ROOT / source).exists() or ignored(source)] == []


def test_the_build_context_leaves_out_local_state():
    local = [".venv/bin/python", ".git/HEAD", "test-artifacts/a.png", "leap_ray/serve/__pycache__/app.pyc"]
    assert [path for path in [*local, "leap_ray.egg-info"] if not ignored(path)] == []
    assert not ignored("leap_ray/serve/app.py")


def test_the_default_command_serves_the_copied_production_config():
    (command,) = [value for keyword, value in dockerfile() if keyword == "CMD"]
    (config,) = [destination for sources, destination in copies() if sources == ["serve_config.yaml"]]
    assert shlex.split(command.strip("[]").replace(",", " ")) == ["leap-ray", "serve", config]


def test_the_cache_folder_is_made_as_rays_user_before_the_command():
    # An empty named volume mounted on it takes its owner; on a folder the image lacks, it is root's.
    steps = dockerfile()
    (made,) = [
        i
        for i, (keyword, value) in enumerate(steps)
        if keyword == "RUN" and IMAGE_CACHE in shlex.split(value)
    ]
    assert shlex.split(steps[made][1])[:2] == ["mkdir", "-p"]
    users = [value for keyword, value in steps[:made] if keyword == "USER"]
    assert users and users[-1] in {RAY_USER, str(RAY_UID)}
    assert [value for keyword, value in steps[made:] if keyword == "USER"] == []
    assert made < [keyword for keyword, _ in steps].index("CMD")
