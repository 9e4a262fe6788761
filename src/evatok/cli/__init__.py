"""The `evatok` command line: one subcommand module per job, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from evatok import __version__

# Each module defines `register(subparsers)`, which adds its subcommands and sets `func` on them.
COMMAND_MODULES: tuple[str, ...] = (
    "evatok.cli.inspect",
    "evatok.cli.search",
    "evatok.cli.train",
    "evatok.cli.weights",
    "evatok.cli.eval",
    "evatok.cli.tokens",
    "evatok.cli.router",
    "evatok.cli.curve",
    "evatok.cli.pipeline",
    "evatok.cli.generate",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="evatok",
        description="Adaptive-length video tokenization (EVATok).",
    )
    parser.add_argument("--version", action="version", version=f"evatok {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `evatok` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = levels[min(args.verbose, len(levels) - 1)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
