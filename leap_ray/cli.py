"""The `leap-ray` command."""

import argparse
import base64
import os
import signal
import sys
import threading
from pathlib import Path

EXAMPLE_BODY = (
    '{"prompt": "a lighthouse at dawn", "height": 256, "width": 256, "num_inference_steps": 20, "seed": 1}'
)


def _tiny_models(args: argparse.Namespace) -> None:
    from leap_ray.tiny import write_tiny_models

    for name, folder in write_tiny_models(Path(args.directory)).items():
        print(f"{name}: {folder}")


def _stop_on_signals(stop: threading.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


def _serve(args: argparse.Namespace) -> None:
    """Runs the graph in the foreground until Ctrl-C or SIGTERM, then stops Serve and Ray."""
    from leap_ray.serve.launch import deploy, load_config, start_ray, stop_local_ray, wait_until_running

    config = load_config(args.config, host=args.host, port=args.port)
    stop = threading.Event()
    _stop_on_signals(stop)
    start_ray(address=args.address)
    # Again after Ray's start: its core worker installs a crash handler for SIGTERM that ends in an
    # abort (exit 134); ours replaces it, so SIGTERM stops the service cleanly.
    _stop_on_signals(stop)
    try:
        deploy(config)
        print("Starting the models (the tiny ones are built on first use)...", flush=True)
        if not wait_until_running(config, stop=stop):
            return
        address = f"http://{config.http_options.host}:{config.http_options.port}"
        print(
            f"\nleap_ray is serving at {address} (API docs: {address}/docs). Try:\n\n"
            f"  curl -s {address}/v1/sdxl -H 'Content-Type: application/json' -H 'Accept: image/png' \\\n"
            f"    -d '{EXAMPLE_BODY}' -o image.png\n\n"
            "Ray's own tools see it too: RAY_AUTH_MODE=token serve status\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        stop.wait()
    finally:
        stop_local_ray()


class ProgressBar:
    """A one-line progress bar on stderr, fed by the service's progress events."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, event: dict) -> None:
        done, total = (
            (event["step"], event["total"]) if "step" in event else (event["seconds"], event["total"])
        )
        filled = int(30 * done / total) if total else 30
        print(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done:g}/{total:g}",
            end="",
            file=sys.stderr,
        )


def _generate(args: argparse.Namespace) -> None:
    """Generates against a running service and writes the output file."""
    from leap_ray.client import LeapRayClient

    client = LeapRayClient(args.url, api_key=args.api_key)
    extension = Path(args.output).suffix.lower().lstrip(".")
    seed = {"seed": args.seed} if args.seed is not None else {}
    if args.kind == "image":
        image_format = {"jpg": "jpeg"}.get(extension, extension or "png")
        request = {"prompt": args.prompt, "height": args.height, "width": args.width, **seed}
        request.update(num_inference_steps=args.steps, output_format=image_format)
        response = client.generate_image(request, on_progress=ProgressBar("image"))
        data, seed_used = base64.b64decode(response.images[0].data), response.images[0].seed
    else:
        request = {"prompt": args.prompt, "duration": args.duration, "format": extension or "wav", **seed}
        if args.melody:
            request["melody"] = base64.b64encode(Path(args.melody).read_bytes()).decode()
        response = client.generate_music(request, on_progress=ProgressBar("music"))
        data, seed_used = base64.b64decode(response.audio), response.seed
    Path(args.output).write_bytes(data)
    print(f"\nwrote {args.output} (seed {seed_used})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap-ray", description=__doc__)
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
    serve.set_defaults(run=_serve)
    generate = commands.add_parser("generate", help="generate with a running service")
    generate.add_argument("kind", choices=["image", "music"])
    generate.add_argument("prompt")
    generate.add_argument(
        "-o", "--output", required=True, help="file to write; its extension sets the format"
    )
    generate.add_argument("--seed", type=int)
    generate.add_argument("--width", type=int, default=1024)
    generate.add_argument("--height", type=int, default=1024)
    generate.add_argument("--steps", type=int, default=50, help="denoising steps (images)")
    generate.add_argument("--duration", type=float, default=10.0, help="seconds (music)")
    generate.add_argument("--melody", help="audio file whose melody guides the music")
    generate.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    generate.add_argument("--api-key", default=os.environ.get("LEAP_RAY_API_KEY"), help="or LEAP_RAY_API_KEY")
    generate.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
