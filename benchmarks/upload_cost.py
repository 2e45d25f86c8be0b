"""What one uploaded image costs the ingress (issue 25): for each hostile family and for the largest
legitimate images, the time to its 422 (or to the decoded image), the CPU time, the peak memory it
adds, and the worst lag of an asyncio loop running beside it. The upload goes through what the ingress
runs on a worker thread for it: `/v1/sdxl` parses and validates the JSON body; `/v1/images/edits`
reads the form, translates it (`sdxl_input`) and validates the SDXL request.

Each upload runs in a forked child, which builds the file itself (its own peak memory) and is killed
past `--timeout` (reported as such: the old code took minutes on some).

    python -m benchmarks.upload_cost [--quick] [--timeout 180] [--only NAME,...]
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import httpx

from benchmarks.common import print_table, write_results
from leap_ray.api.openai_images import OpenAIImageEditRequest
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.errors import LeapRayError
from leap_ray.serve.bodies import parse_body, parse_form_body, validated
from leap_ray.testing import hostile_images as hostile

MB = 1_000_000
TICK_S = 0.001  # the loop beside the upload wakes this often; its lateness is the lag


@dataclass(frozen=True)
class Upload:
    """One upload: how its file is built (`size` bytes or items: the full run's, or --quick's), and
    the route it is sent to, with the fields beside it."""

    name: str
    build: Callable[[int], bytes]
    size: int
    quick_size: int
    route: str = "sdxl"
    fields: tuple[tuple[str, str], ...] = ()


# A strength that keeps no step of 5: a cheap check any edit should fail before its image is decoded.
NO_STEP_KEPT = (("strength", "0.1"), ("num_inference_steps", "5"))

UPLOADS = [
    Upload("jpeg-repeated-scan-2MB", hostile.repeated_scan_jpeg_of, 2 * MB, 64_000),
    Upload("jpeg-repeated-scan-16MB", hostile.repeated_scan_jpeg_of, 16 * MB, 256_000),
    Upload("jpeg-at-100-scans", hostile.repeated_scan_jpeg, 100, 100),
    Upload("jpeg-fill-bytes-16MB", lambda size: hostile.padded_jpeg(size, b"\xff"), 16 * MB, 256_000),
    Upload(
        "jpeg-empty-comments-16MB",
        lambda size: hostile.padded_jpeg(size, b"\xff\xfe\x00\x02"),
        16 * MB,
        256_000,
    ),
    Upload("png-1.3M-empty-chunks", hostile.empty_chunk_png, 1_300_000, 20_000),
    Upload("png-inflating-chunks-16MB", hostile.inflating_chunk_png, 16 * MB, 256_000),
    Upload("png-exif-64k-tags-turned", hostile.exif_png, 64_000, 64_000),
    Upload("webp-350k-frames-16MB", hostile.many_frame_webp, 16 * MB, 256_000),
    Upload("largest-png-2048", hostile.largest_png, 2048, 512),
    Upload("largest-jpeg-2048-cmyk", hostile.largest_jpeg, 2048, 512),
    Upload(
        "edit-jpeg-repeated-scan-2MB", hostile.repeated_scan_jpeg_of, 2 * MB, 64_000, "edit", NO_STEP_KEPT
    ),
    Upload("edit-transparent-png-2048", hostile.transparent_png, 2048, 512, "edit", NO_STEP_KEPT),
]


def _outcome(request: Any) -> str:
    image = request.image
    return f"decoded {image.width}x{image.height}"


def sdxl_upload(raw: bytes) -> Callable[[], str]:
    """POST /v1/sdxl with the image: the body parsed and validated, as `read_body` does."""
    body = json.dumps({"prompt": "a", "image": base64.b64encode(raw).decode()}).encode()
    return lambda: _outcome(parse_body(body, SDXLRequest))


def edit_upload(raw: bytes, fields: dict[str, str]) -> Callable[[], str]:
    """POST /v1/images/edits with the image: the form read, translated and validated, as the route
    and the gateway do."""
    form = httpx.Request("POST", "http://x", data={"prompt": "a", **fields}, files={"image": ("i", raw)})
    body, content_type = form.read(), form.headers["content-type"]

    def send() -> str:
        edit = parse_form_body(body, content_type, OpenAIImageEditRequest)
        return _outcome(validated(SDXLRequest, edit.sdxl_input()))

    return send


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


async def _beside(send: Callable[[], str]) -> tuple[str, float, float, float]:
    """Runs `send` on a worker thread with a ticking loop beside it: (outcome, seconds, CPU seconds of
    the worker, worst loop lag in seconds)."""
    loop, lags, done = asyncio.get_running_loop(), [0.0], asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(TICK_S)
            lags.append(loop.time() - before - TICK_S)

    def timed() -> tuple[str, float]:
        started = time.thread_time()
        try:
            outcome = send()
        except LeapRayError as error:
            outcome = f"{error.status_code} {error.message}"
        return outcome, time.thread_time() - started

    ticker = loop.create_task(tick())
    await asyncio.sleep(0.05)  # the ticker's first ticks, idle
    started = time.perf_counter()
    outcome, cpu = await asyncio.to_thread(timed)
    seconds = time.perf_counter() - started
    done.set()
    await ticker
    return outcome, seconds, cpu, max(lags)


def _measure(upload: Upload, size: int, results: Connection) -> None:
    """In the child: build the file, then send it once, measured."""
    raw = upload.build(size)
    if upload.route == "edit":
        send = edit_upload(raw, dict(upload.fields))
    else:
        send = sdxl_upload(raw)
    baseline = _rss_mb()
    outcome, seconds, cpu, lag = asyncio.run(_beside(send))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.send(
        {
            "bytes": len(raw),
            "seconds": seconds,
            "cpu_s": cpu,
            "worst_loop_lag_ms": lag * 1000,
            "peak_mb_added": max(0.0, peak - baseline),
            "outcome": outcome[:90],
        }
    )


def measure(upload: Upload, quick: bool, timeout_s: float) -> dict[str, Any]:
    """One upload's row, measured in a forked child (killed past `timeout_s`)."""
    size = upload.quick_size if quick else upload.size
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_measure, args=(upload, size, send))
    started = time.perf_counter()
    child.start()
    child.join(timeout_s)
    row: dict[str, Any] = {"upload": upload.name, "route": upload.route}
    if child.is_alive():
        child.kill()
        child.join()
        return {**row, "seconds": time.perf_counter() - started, "outcome": f"killed after {timeout_s:.0f} s"}
    if not receive.poll():
        return {**row, "outcome": f"the child died (exit code {child.exitcode})"}
    return {**row, **receive.recv()}


COLUMNS = ("upload", "route", "bytes", "seconds", "cpu_s", "worst_loop_lag_ms", "peak_mb_added", "outcome")


def rows(quick: bool, timeout_s: float, only: set[str] | None = None) -> list[dict[str, Any]]:
    """A row per upload (all of them, or those named in `only`), every column in each."""
    chosen = [upload for upload in UPLOADS if only is None or upload.name in only]
    measured = [measure(upload, quick, timeout_s) for upload in chosen]
    return [{column: row.get(column, "-") for column in COLUMNS} for row in measured]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="files of a few hundred KB (a check)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before an upload is killed")
    parser.add_argument("--only", default=None, help="comma-separated upload names")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    table = rows(args.quick, args.timeout, only)
    print_table("What one upload costs the ingress (one worker thread; a loop ticking beside it)", table)
    write_results("upload_cost", {"quick": args.quick, "timeout_s": args.timeout, "rows": table})


if __name__ == "__main__":
    main()
