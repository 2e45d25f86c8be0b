"""The `leap-ray` command."""

import argparse
import asyncio
import base64
import json
import math
import os
import random
import signal
import struct
import sys
import threading
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

import httpx

from leap_ray.api.common import SCHEDULERS
from leap_ray.api.progress import AudioDelta
from leap_ray.client import LeapRayClient, NotTheServiceError, ServiceError

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

EXAMPLE_BODY = (
    '{"prompt": "a lighthouse at dawn", "height": 256, "width": 256, "num_inference_steps": 20, "seed": 1}'
)


def _tiny_models(args: argparse.Namespace) -> None:
    from leap_ray.tiny import write_tiny_models

    for name, folder in write_tiny_models(Path(args.directory)).items():
        print(f"{name}: {folder}")


def stop_on_signals(stop: threading.Event) -> None:
    """The first Ctrl-C or SIGTERM stops the service gracefully; a second one stops waiting for that
    (a KeyboardInterrupt); any after it are ignored, so the interrupted stop still ends what it
    started (Ray's processes that ignore SIGTERM get their SIGKILL)."""
    interrupted = threading.Event()

    def handle(*_: object) -> None:
        if not stop.is_set():
            stop.set()
        elif not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)


def _serve(args: argparse.Namespace) -> None:
    """Runs the graph in the foreground until Ctrl-C or SIGTERM, then stops Serve and the Ray it
    started (or, on a cluster it joined, removes only its own applications)."""
    from leap_ray.serve import launch

    tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    try:
        config = launch.load_config(args.config, host=args.host, port=args.port, **tls)
    except launch.TlsConfigError as error:
        raise UsageError(str(error)) from None
    joined = launch.joins_cluster(args.address)
    if args.replace and not joined:
        raise UsageError("--replace is for a cluster joined with --address (or RAY_ADDRESS)")
    stop, deployed = threading.Event(), False
    stop_on_signals(stop)
    try:  # from Ray's start on: whatever happens, the finally ends what was started
        dashboard = launch.start_ray(address=args.address, expose_metrics=args.expose_metrics)
        # Again after Ray's start: its core worker installs a crash handler for SIGTERM that ends in
        # an abort (exit 134); ours replaces it, so SIGTERM stops the service cleanly.
        stop_on_signals(stop)
        if joined and not args.replace:
            _check_cluster_is_free()
        if stop.is_set():  # stopped while Ray was starting
            return
        launch.deploy(config)
        deployed = True
        _serve_until_stopped(config, args, stop, dashboard, joined)
    except (RuntimeError, TimeoutError) as error:  # a deployment failed, or --ready-timeout passed
        raise StartFailed(str(error)) from None
    finally:
        _stop(config, stop, joined, deployed)


def _check_cluster_is_free() -> None:
    from leap_ray.serve import launch

    try:
        launch.check_cluster_is_free()
    except launch.ClusterInUse as error:
        raise UsageError(
            f"the cluster's Serve already runs {error}: deploying replaces Serve's config whole, "
            "removing them. Add leap_ray to your Serve config and `serve deploy` it, or pass --replace"
        ) from None


def _serve_until_stopped(
    config: "ServeDeploySchema",
    args: argparse.Namespace,
    stop: threading.Event,
    dashboard: str | None,
    joined: bool,
) -> None:
    from leap_ray.serve import launch

    tiny = " (the tiny ones are built on first use)" if uses_tiny_models(config) else ""
    print(f"Starting the models{tiny}...", flush=True)
    if launch.wait_until_running(config, args.ready_timeout, stop, report=_say):
        print(serving_message(config, dashboard, joined), flush=True)
        stop.wait()


def _say(line: str) -> None:
    print(line, flush=True)


def _stop(config: "ServeDeploySchema", stop: threading.Event, joined: bool, deployed: bool) -> None:
    """Stops its own Ray, or takes its applications off the cluster it joined (nothing, when it
    deployed none: a same-named application there is not its own)."""
    from leap_ray.serve import launch

    stop.set()  # from here on a signal means "stop waiting", whatever ended the service
    if not joined:
        print("Stopping (Ctrl-C again to stop waiting)...", flush=True)
        launch.stop_local_ray()
    elif deployed:
        print("Removing its applications (Ctrl-C again to stop waiting)...", flush=True)
        launch.leave_cluster(config)
    else:
        launch.disconnect()


def uses_tiny_models(config: "ServeDeploySchema") -> bool:
    """Whether a config names a `tiny:` model anywhere in its applications' arguments."""
    from leap_ray.model_sources import TINY_PREFIX

    return f'"{TINY_PREFIX}' in json.dumps([application.args for application in config.applications])


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def serving_message(config: "ServeDeploySchema", dashboard: str | None = None, joined: bool = False) -> str:
    """What `leap-ray serve` prints once the service runs: its address, a request to try, and where
    Ray's dashboard is (the port it got: 8265 may be another Ray's), with `serve status` pointed at it."""
    from leap_ray.serve.launch import http_address

    address = http_address(config)
    own_ca = (
        "A certificate of a CA of your own: curl --cacert CA.pem, or SSL_CERT_FILE=CA.pem for leap-ray "
        "generate and Python clients.\n"
        if config.http_options.ssl_certfile
        else ""
    )
    return (
        f"\nleap_ray is serving at {address} (API docs: {address}/docs). Try:\n\n"
        f"  curl -s {address}/v1/sdxl -H 'Content-Type: application/json' -H 'Accept: image/png' \\\n"
        f"    -d '{EXAMPLE_BODY}' -o image.png\n\n"
        f"{own_ca}"
        f"{_ray_tools(dashboard, joined)}"
        "Ctrl-C stops it."
    )


def _ray_tools(dashboard: str | None, joined: bool) -> str:
    """Ray's `serve` command pointed at this Ray's dashboard (without `-a` it asks 127.0.0.1:8265).
    A cluster's dashboard address is the head's own view of it (often 127.0.0.1): said as such."""
    if dashboard is None:
        return ""
    if joined:
        return (
            f"The cluster's dashboard, as its head sees it: {dashboard}. On the head:\n"
            f"  RAY_AUTH_MODE=token serve status -a {dashboard}\n"
        )
    return (
        f"Ray's dashboard: {dashboard}. Ray's own tools see it too:\n"
        f"  RAY_AUTH_MODE=token serve status -a {dashboard}\n"
    )


class Progress:
    """Progress from the service's events: a tqdm bar with ETA on a terminal, plain lines at every
    tenth of the work otherwise (logs, pipes)."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.reported, self.stage = label, None, -1, None

    def __call__(self, event: dict) -> None:
        done, total = (
            (event["step"], event["total"]) if "step" in event else (event["seconds"], event["total"])
        )
        if event.get("stage") != self.stage:  # the refiner's steps: a line or a bar of their own
            self.close()
            self.bar, self.reported, self.stage = None, -1, event.get("stage")
        label = f"{self.label} ({self.stage})" if self.stage else self.label
        if not sys.stderr.isatty():
            if (tenth := int(10 * done / total) if total else 10) > self.reported:
                self.reported = tenth
                print(f"{label}: {done:g}/{total:g}", file=sys.stderr, flush=True)
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=label, unit="step" if "step" in event else "s")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


UNKNOWN_SIZE = 0xFFFFFFFF  # a WAV size field meaning "until the stream ends", for pipes


def wav_stream_header(sample_rate: int) -> bytes:
    """The header of a WAV stream of 16-bit mono PCM of unknown length: its RIFF and data sizes are
    0xFFFFFFFF, which players reading a pipe (`ffplay -`, `aplay`) take as "until the end"."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    unknown = struct.pack("<I", UNKNOWN_SIZE)
    return b"RIFF" + unknown + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + unknown


class WavStream:
    """--play: a track's pieces, as they arrive, written to `out` as one WAV stream. A piece is placed
    by its `start` (after a replica's failure the track starts again: what was written is skipped);
    a reader that goes away (the player quit) ends the playing, not the generation."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.samples, self.sample_rate, self.closed = out, 0, 0, False

    def __call__(self, piece: AudioDelta) -> None:
        if self.closed:
            return
        if not self.sample_rate:
            self.sample_rate = piece.sample_rate
            self._write(wav_stream_header(piece.sample_rate))
        pcm = piece.pcm[2 * max(0, self.samples - round(piece.start * self.sample_rate)) :]
        self.samples += len(pcm) // 2
        self._write(pcm)

    def _write(self, data: bytes) -> None:
        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:
            self.closed = True
            # Python's own flush of stdout at exit would fail again, noisily: point it at nothing.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)


IMAGE_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
AUDIO_FORMATS = {"wav": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mp3"}


def _output_format(args: argparse.Namespace) -> str:
    """--format, else the output file's extension, else png / wav."""
    formats = IMAGE_FORMATS if args.kind == "image" else AUDIO_FORMATS
    named = args.format or (
        Path(args.output).suffix.lower().lstrip(".") if args.output not in (None, "-") else ""
    )
    chosen = formats.get(named or next(iter(formats)))
    if chosen is None:
        raise UsageError(f"cannot write {args.kind}s as {named!r}; use one of: {', '.join(formats)}")
    return chosen


def _request(args: argparse.Namespace) -> dict:
    """The service request the flags describe (only the flags given; the service's defaults rest)."""
    flags = {
        "seed": args.seed,
        "negative_prompt": args.negative_prompt,
        "guidance_scale": args.guidance,
    }
    if args.kind == "image":
        flags.update(
            height=args.height,
            width=args.width,
            num_inference_steps=args.steps,
            scheduler=args.scheduler,
            num_images_per_prompt=args.images,
            output_format=_output_format(args),
            strength=args.strength,
            loras=[_lora(text) for text in args.lora] or None,
            refiner={} if args.refiner else None,
        )
        for name, path in (("image", args.image), ("mask_image", args.mask)):
            if path:
                flags[name] = base64.b64encode(Path(path).read_bytes()).decode()
    else:
        flags.update(duration=args.duration, format=_output_format(args))
        if args.melody:
            flags["melody"] = base64.b64encode(Path(args.melody).read_bytes()).decode()
        flags.pop("negative_prompt")
    return {"prompt": args.prompt, **{name: value for name, value in flags.items() if value is not None}}


def _lora(text: str) -> dict:
    """--lora NAME or NAME=SCALE."""
    name, _, scale = text.partition("=")
    try:
        return {"name": name, "scale": float(scale)} if scale else {"name": name}
    except ValueError:
        raise UsageError(f"--lora {text}: the scale after '=' must be a number") from None


def _outputs(client: LeapRayClient, args: argparse.Namespace, request: dict) -> list[tuple[bytes, int]]:
    """(bytes, seed) of each output, generated directly or as a job (--job)."""
    service = "sdxl" if args.kind == "image" else "musicgen"
    if args.job:
        job = client.wait_job(client.submit_job(service, request).id)
        if job.status != "succeeded":
            raise UsageError(f"job {job.id} {job.status}: {job.error.message if job.error else ''}")
        return [(client.job_output(job, index), job.seed + index) for index in range(len(job.outputs))]
    progress = Progress(args.kind)
    try:
        if args.kind == "image":
            images = client.generate_image(request, on_progress=progress).images
            return [(base64.b64decode(image.data), image.seed) for image in images]
        player = WavStream(sys.stdout.buffer) if args.play else None
        track = client.generate_music(request, on_progress=progress, on_audio=player)
        if player is not None and not player.sample_rate:
            print("leap-ray: the service sent no audio while generating", file=sys.stderr)
        return [(base64.b64decode(track.audio), track.seed)]
    finally:
        progress.close()


def _paths(output: str, count: int) -> list[str]:
    """The files to write: the output itself, or name-0.ext, name-1.ext... for several."""
    if count == 1 or output == "-":
        return [output] * count
    path = Path(output)
    return [str(path.with_name(f"{path.stem}-{index}{path.suffix}")) for index in range(count)]


def _generate(args: argparse.Namespace) -> None:
    """Generates against a running service and writes the outputs (`-o -`: to stdout)."""
    from leap_ray.client import LeapRayClient

    if args.output == "-" and (args.images or 1) > 1:
        raise UsageError("-o - takes one output; write several images to files (-o name.png)")
    _check_play(args)
    request = _request(args)
    if args.output is not None:
        _check_writable(_paths(args.output, args.images or 1))
    with LeapRayClient(args.url, api_key=args.api_key, retries=CLI_RETRIES) as client:
        outputs = _outputs(client, args, request)
    if args.output is None:  # --play alone: the audio went to stdout as it came
        return
    written = []
    for (data, seed), path in zip(outputs, _paths(args.output, len(outputs)), strict=True):
        if path == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            Path(path).write_bytes(data)
        written.append({"path": path, "seed": seed, "bytes": len(data)})
    if args.json:
        to_stdout = args.output != "-" and not args.play
        print(json.dumps({"outputs": written}), file=sys.stdout if to_stdout else sys.stderr)
    else:
        for item in written:
            seed = f" (seed {item['seed']})" if item["seed"] is not None else ""
            print(f"wrote {item['path']}{seed}", file=sys.stderr)


def _check_writable(paths: list[str]) -> None:
    """Each output file can be written, checked before anything is generated: its folder exists, it is
    not a folder, it opens for writing. A file that was not there is not left behind."""
    for path in paths:
        if path == "-":
            continue
        existed = os.path.lexists(path)
        try:
            with open(path, "ab"):  # appending: an existing file is not emptied yet
                pass
        except OSError as error:
            raise UsageError(f"cannot write -o {path}: {error.strerror or error}") from None
        if not existed:
            os.unlink(path)


def _check_play(args: argparse.Namespace) -> None:
    """--play streams a direct music generation to stdout; -o is then optional, and not stdout."""
    if not args.play:
        if args.output is None:
            raise UsageError("-o/--output is required (a file, or - for stdout), unless --play")
        return
    if args.kind != "music":
        raise UsageError("--play plays music; images have nothing to play")
    if args.job:
        raise UsageError("--play streams a direct generation; a job (--job) sends no audio until done")
    if args.output == "-":
        raise UsageError("--play writes to stdout already; -o - would mix the final file into it")


def _loadtest(args: argparse.Namespace) -> None:
    """Open-loop load against a running service: a table on stdout, the whole result as JSON."""
    from leap_ray import loadtest

    try:
        classes = [loadtest.parse_mix(spec) for spec in args.mix or DEFAULT_MIX]
    except ValueError as error:
        raise UsageError(str(error)) from None
    rates_ok = all(0 < rate <= MAX_RATE for rate in (args.rate, args.ramp_to or args.rate))
    if not 0 < args.duration <= MAX_LOADTEST_S or not rates_ok:
        raise UsageError(
            f"--duration must be in (0, {MAX_LOADTEST_S:g}] s, --rate and --ramp-to in (0, {MAX_RATE:g}]/s"
        )
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    run = loadtest.open_loop(
        args.url.rstrip("/"),
        args.rate,
        args.duration,
        random.Random(args.seed),
        loadtest.mixed(classes),
        args.drain,
        ramp_to=args.ramp_to,
        headers=headers,
    )
    result = {
        "url": args.url,
        "rate": args.rate,
        "ramp_to": args.ramp_to,
        "duration_s": args.duration,
        "mix": [vars(c) for c in classes],
        **asyncio.run(run),
    }
    print(loadtest.report(result, classes))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)


CLI_RETRIES = 3  # a person waits: an unreachable service is said within about 2 s
DEFAULT_MIX = ["sdxl:1024x1024:30=3", "musicgen:10=1"]
MAX_LOADTEST_S, MAX_RATE = 3600.0, 1000.0


class UsageError(Exception):
    """A mistake of the user's: said on one line, exit status 2."""


class StartFailed(Exception):
    """`leap-ray serve` could not bring the service up (a deployment failed, or --ready-timeout
    passed): said on one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap-ray", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('leap-ray')}")
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("tiny-models", help="write the tiny random-weight models (offline, seconds)")
    tiny.add_argument("directory", help="folder to write them into, one subfolder per model")
    tiny.set_defaults(run=_tiny_models)
    serve = commands.add_parser("serve", help="run the service in the foreground")
    serve.add_argument("config", nargs="?", help="Serve config file (default: tiny models on the CPU)")
    serve.add_argument("--host", help="address to listen on (default: the config's)")
    serve.add_argument("--port", type=int, help="port to listen on (default: the config's)")
    serve.add_argument(
        "--address",
        help="a running Ray cluster to deploy on (its head's host:port, as `ray start` printed it); "
        "default: $RAY_ADDRESS, else a Ray started on this machine",
    )
    serve.add_argument(
        "--expose-metrics",
        action="store_true",
        help="the Ray it starts serves its metrics (Prometheus, no auth) on every interface, for a "
        "Prometheus on another host; Ray's other ports then listen on every interface too (token auth "
        "on). Default: all of them on 127.0.0.1. With --address, the cluster's own setup decides",
    )
    serve.add_argument(
        "--replace",
        action="store_true",
        help="with --address: deploy even where the cluster's Serve already runs applications, "
        "replacing them (Serve's config is one whole; default: refuse)",
    )
    serve.add_argument(
        "--ready-timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="give up (exit 1) if the service is not running after this long; default: wait (real "
        "models download and compile for many minutes), saying every 30 s what is still starting",
    )
    serve.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="serve HTTPS with this certificate (PEM, the chain after it), with --tls-key; Serve's "
        "http_options.ssl_certfile",
    )
    serve.add_argument(
        "--tls-key", metavar="PATH", help="the certificate's private key (PEM); http_options.ssl_keyfile"
    )
    serve.set_defaults(run=_serve)
    generate = commands.add_parser("generate", help="generate with a running service")
    generate.add_argument("kind", choices=["image", "music"])
    generate.add_argument("prompt")
    generate.add_argument(
        "-o", "--output", help="file to write (its extension sets the format), or - for stdout"
    )
    generate.add_argument("--format", help="png, jpeg or webp; wav, flac, ogg or mp3 (default: from -o)")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--negative-prompt", help="what the image should not show")
    generate.add_argument("--guidance", type=float, help="guidance scale")
    generate.add_argument("--width", type=int, help="pixels (images; the service's default: 1024)")
    generate.add_argument("--height", type=int, help="pixels (images; the service's default: 1024)")
    generate.add_argument("--steps", type=int, help="denoising steps (images)")
    generate.add_argument(
        "--scheduler", choices=SCHEDULERS, help="the sampler (images; the service's default: the model's own)"
    )
    generate.add_argument("--images", type=int, help="images for the prompt; files name-0.png, name-1.png...")
    generate.add_argument("--image", help="img2img: the image to start from (inpainting with --mask)")
    generate.add_argument("--mask", help="inpainting: a mask the image's size, white where to repaint")
    generate.add_argument("--strength", type=float, help="with --image: how much to repaint, 0-1")
    generate.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME[=SCALE]",
        help="apply a LoRA adapter (repeatable)",
    )
    generate.add_argument("--refiner", action="store_true", help="finish the image with the SDXL refiner")
    generate.add_argument("--duration", type=float, help="seconds (music; the service's default: 10)")
    generate.add_argument("--melody", help="audio file whose melody guides the music")
    generate.add_argument(
        "--play",
        action="store_true",
        help="music: write the audio to stdout as it is generated, a WAV stream (| ffplay -nodisp -, "
        "| aplay); -o still writes the final file",
    )
    generate.add_argument("--job", action="store_true", help="submit as a job and wait for it")
    generate.add_argument("--json", action="store_true", help="print what was written as JSON")
    generate.add_argument(
        "--url", default=os.environ.get("LEAP_RAY_URL", "http://127.0.0.1:8000"), help="or LEAP_RAY_URL"
    )
    generate.add_argument("--api-key", default=os.environ.get("LEAP_RAY_API_KEY"), help="or LEAP_RAY_API_KEY")
    generate.set_defaults(run=_generate)
    load = commands.add_parser("loadtest", help="open-loop load against a running service")
    load.add_argument(
        "--url", default=os.environ.get("LEAP_RAY_URL", "http://127.0.0.1:8000"), help="or LEAP_RAY_URL"
    )
    load.add_argument("--api-key", default=os.environ.get("LEAP_RAY_API_KEY"), help="or LEAP_RAY_API_KEY")
    load.add_argument("--rate", type=float, default=1.0, help="requests per second (Poisson arrivals)")
    load.add_argument("--ramp-to", type=float, help="ramp the rate linearly to this by the end")
    load.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals (at most 3600)")
    load.add_argument(
        "--mix",
        action="append",
        help="a request class, repeatable: sdxl[:WxH[:STEPS]]=WEIGHT or musicgen[:SECONDS]=WEIGHT "
        f"(default: {' '.join(DEFAULT_MIX)})",
    )
    load.add_argument("--drain", type=float, default=900.0, help="seconds to wait for answers after the last")
    load.add_argument("--seed", type=int, default=0, help="seeds the arrivals and the mix")
    load.add_argument("--out", help="write the result as JSON here")
    load.set_defaults(run=_loadtest)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Runs a command; a user's mistake, an error answer or an unreachable service is said on one
    line with a non-zero exit status, never as a traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        _fail(str(error), 2)
    except StartFailed as error:
        _fail(str(error), 1)
    except NotTheServiceError as error:
        _fail(error.message, 1)
    except ServiceError as error:
        named = f" ({error.param})" if error.param else ""
        _fail(f"the service answered {error.status_code}: {error.message}{named}", 1)
    except httpx.HTTPError as error:
        _fail(f"cannot reach the service at {args.url}: {error}{_certificate_hint(error)}", 1)
    except OSError as error:
        _fail(f"{error.strerror or error}: {error.filename}" if error.filename else str(error), 2)
    except ModuleNotFoundError as error:
        _fail(f"{error}; `leap-ray {args.command}` needs the service: pip install 'leap-ray[serve]'", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _certificate_hint(error: httpx.HTTPError) -> str:
    """For a certificate this machine does not trust: how to trust the one CA it was issued by."""
    if "CERTIFICATE_VERIFY_FAILED" not in str(error):
        return ""
    return " (a certificate of a CA of your own: SSL_CERT_FILE=ca.pem names the CA's certificate to trust)"


def _fail(message: str, status: int) -> NoReturn:
    print(f"leap-ray: error: {message}", file=sys.stderr)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
