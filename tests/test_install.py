"""The install the README's two commands run, read from make's own dry run (`make -n`, nothing is
installed): `make serve` installs what serving needs and nothing else, `make test` the tools on top,
and torch comes first, pinned, from the file pyproject names."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def pip_installs(target: str, venv: Path) -> list[str]:
    """The pip install commands `make TARGET` would run in a machine with no venv yet."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    lines = [line.split("pip install ", 1) for line in done.stdout.splitlines() if "pip install " in line]
    return [f"pip install {arguments}" for _, arguments in lines if arguments != "--quiet --upgrade pip"]


def test_make_serve_installs_torch_then_the_serve_extra_and_no_test_tools(tmp_path):
    installs = pip_installs("serve", tmp_path / "venv")
    assert installs == [
        "pip install --quiet -r requirements/torch.txt",
        'pip install --quiet -e ".[serve]"',
        "pip install --quiet --no-deps invisible-watermark==0.2.0",
    ]


def test_make_test_adds_the_test_and_benchmark_tools(tmp_path):
    installs = pip_installs("test", tmp_path / "venv")
    assert installs[0] == "pip install --quiet -r requirements/torch.txt"
    assert installs[-1] == 'pip install --quiet -e ".[serve,test,bench]"'


def test_torch_is_pinned_alike_in_its_requirements_file_and_the_serve_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (serve_pin,) = [
        pin for pin in pyproject["project"]["optional-dependencies"]["serve"] if pin.startswith("torch")
    ]
    lines = (ROOT / "requirements" / "torch.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == [serve_pin]
    assert "requirements/torch.txt" in (ROOT / "pyproject.toml").read_text()  # the comment naming it
