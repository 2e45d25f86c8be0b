"""`leap-ray` without a service: user mistakes and an unreachable service are one line on stderr with
a non-zero exit, never a traceback (an output that cannot be written is said before any request, a
proxy's HTML error page as its status and URL); --version; LEAP_RAY_URL picks the service; --scheduler
offers only the names the service takes."""

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


def test_scheduler_help_lists_only_the_names_the_service_accepts():
    from leap_ray.api.common import SCHEDULERS
    from leap_ray.api.sdxl import SDXLRequest

    done = leap_ray("generate", "--help")
    assert "{ddim,euler,euler_ancestral,dpmpp_2m}" in done.stdout and "dpm++" not in done.stdout
    for name in SCHEDULERS:  # each one listed is one the request model takes
        assert SDXLRequest(prompt="a", scheduler=name).scheduler == name
    refused = leap_ray("generate", "image", "a", "-o", "x.png", "--scheduler", "dpm++")
    assert refused.returncode == 2 and "invalid choice: 'dpm++'" in refused.stderr


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("no/such/folder/x.png", "cannot write -o {tmp}/no/such/folder/x.png: No such file or directory"),
        (".", "cannot write -o {tmp}/.: Is a directory"),
    ],
    ids=["missing-folder", "a-folder"],
)
def test_an_output_that_cannot_be_written_fails_before_the_request(output, says, tmp_path):
    # The service is unreachable: had the request been sent first, that would be the error.
    done = leap_ray("generate", "image", "a", "-o", f"{tmp_path}/{output}", "--url", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.strip() == f"leap-ray: error: {says.format(tmp=tmp_path)}"


def test_several_outputs_are_each_checked_before_the_request(tmp_path):
    (tmp_path / "x-1.png").mkdir()
    done = leap_ray(
        "generate",
        "image",
        "a",
        "-o",
        str(tmp_path / "x.png"),
        "--images",
        "2",
        "--url",
        "http://127.0.0.1:9",
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"leap-ray: error: cannot write -o {tmp_path}/x-1.png: Is a directory"


def test_checking_the_output_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    (tmp_path / "old.png").write_bytes(b"before")
    for name in ("new.png", "old.png"):
        done = leap_ray("generate", "image", "a", "-o", str(tmp_path / name), "--url", "http://127.0.0.1:9")
        assert done.returncode == 1 and "cannot reach the service" in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.png"]
    assert (tmp_path / "old.png").read_bytes() == b"before"


BAD_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@pytest.fixture
def proxy_page() -> Iterator[str]:
    """A stand-in for a proxy in front of a service that is down: a 502 HTML page for every request;
    its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(BAD_GATEWAY_PAGE)))
            self.end_headers()
            self.wfile.write(BAD_GATEWAY_PAGE)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["image", "music"])
def test_an_html_error_page_is_one_line_naming_status_and_url(kind, proxy_page, tmp_path):
    output = str(tmp_path / ("x.png" if kind == "image" else "x.wav"))
    done = leap_ray("generate", kind, "a", "-o", output, "--url", proxy_page)
    assert done.returncode == 1
    path = "/v1/sdxl" if kind == "image" else "/v1/musicgen"
    assert done.stderr.strip() == (
        f"leap-ray: error: HTTP 502 Bad Gateway from {proxy_page}{path} (an HTML page, not the service's error)"
    )
