"""The `leap-ray` command."""

import argparse
from pathlib import Path

from leap_ray.testing import write_tiny_models


def _tiny_models(args: argparse.Namespace) -> None:
    for name, folder in write_tiny_models(Path(args.directory)).items():
        print(f"{name}: {folder}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leap-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("tiny-models", help="write the tiny random-weight models (offline, seconds)")
    tiny.add_argument("directory", help="folder to write them into, one subfolder per model")
    tiny.set_defaults(run=_tiny_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
