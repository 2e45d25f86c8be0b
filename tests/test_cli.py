"""`leap-ray` without a service: user mistakes and an unreachable service are one line on stderr with
a non-zero exit, never a traceback; --version; LEAP_RAY_URL picks the service."""

import os
import subprocess
import sys

import pytest


def leap_ray(*arguments: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "leap_ray.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def test_version():
    done = leap_ray("--version")
    assert done.returncode == 0 and done.stdout.startswith("leap-ray ")


@pytest.mark.parametrize(
    ("arguments", "status", "says"),
    [
        (["generate", "image", "a", "-o", "out.gif"], 2, "cannot write images as 'gif'"),
        (["generate", "music", "a", "-o", "x.wav", "--melody", "/no/such.wav"], 2, "No such file"),
        (
            ["generate", "image", "a", "-o", "x.png", "--url", "http://127.0.0.1:9"],
            1,
            "cannot reach the service",
        ),
        (["generate", "image", "a", "-o", "-", "--images", "2"], 2, "-o - takes one output"),
        (["loadtest", "--ramp-to", "inf"], 2, "--ramp-to in"),
        (["loadtest", "--mix", "sdxl:big"], 2, "cannot read the mix"),
    ],
    ids=["wrong-extension", "missing-melody", "unreachable", "stdout-several", "ramp-unbounded", "bad-mix"],
)
def test_mistakes_and_an_unreachable_service_are_one_line(arguments, status, says, tmp_path):
    done = leap_ray(*arguments)
    assert done.returncode == status and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("leap-ray: error: ") and says in line


def test_leap_ray_url_names_the_service():
    done = leap_ray("generate", "image", "a", "-o", "x.png", LEAP_RAY_URL="http://127.0.0.1:9")
    assert done.returncode == 1 and "http://127.0.0.1:9" in done.stderr


def test_progress_lines_name_the_refiner_stage_and_count_its_own_steps(capsys):
    from leap_ray.cli import Progress

    progress = Progress("image")
    for step in range(1, 9):
        progress({"step": step, "total": 8, "stage": "base"})
    for step in (1, 2):
        progress({"step": step, "total": 2, "stage": "refiner"})
    progress.close()
    lines = capsys.readouterr().err.splitlines()  # stderr is not a terminal here: plain lines
    assert lines[-1] == "image (refiner): 2/2" and "image (base): 8/8" in lines
