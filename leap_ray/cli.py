"""The `leap-ray` command."""

import argparse
import signal
import threading
from pathlib import Path

EXAMPLE_BODY = (
    '{"prompt": "a lighthouse at dawn", "height": 256, "width": 256, "num_inference_steps": 20, "seed": 1}'
)


def _tiny_models(args: argparse.Namespace) -> None:
    from leap_ray.testing import write_tiny_models

    for name, folder in write_tiny_models(Path(args.directory)).items():
        print(f"{name}: {folder}")


def _serve(args: argparse.Namespace) -> None:
    """Runs the graph in the foreground until Ctrl-C or SIGTERM, then stops Serve and Ray."""
    import ray
    from ray import serve

    from leap_ray.serve.runner import deploy, load_config, start_local_ray, wait_until_running

    config = load_config(args.config, host=args.host, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    start_local_ray()
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
            "Ctrl-C stops it.",
            flush=True,
        )
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


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
    serve.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
