"""Command line: ``python -m ds9_utils [download|corpus|train|generate]``.

A thin layer over the library: parse arguments, call one function, print a short summary whose last line
is one JSON object (so scripts and tests can read it), and turn known problems into one clear line on
stderr with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .download import DownloadConfig, DownloadError, download_transcripts
from .settings import download_delay


def _print_json(summary: dict) -> None:
    print(json.dumps(summary))


def cmd_download(args: argparse.Namespace) -> int:
    delay = download_delay() if args.delay is None else args.delay
    report = download_transcripts(args.base_url, args.data_dir, DownloadConfig(delay=delay), progress=True)
    print(f"downloaded {len(report.downloaded)} pages, {len(report.cached)} already cached, "
          f"{len(report.failed)} failed, in {report.seconds:.1f} s")
    for failure in report.failed:
        print(f"  failed: {failure['page']}: {failure['reason']}")
    _print_json(report.to_dict())
    return 1 if report.failed and not (report.downloaded or report.cached) else 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from .corpus import build_corpus
    from .download import pages_dir

    data = args.data_dir
    summary = build_corpus(pages_dir(data), (data / "corpus") if data else None)
    info = summary.to_dict()
    print(f"episodes: {info['episodes']}, characters: {info['characters']:,}, vocabulary: {info['vocab_size']}")
    print("top speakers: " + ", ".join(f"{name} ({count})" for name, count in info["top_speakers"][:10]))
    _print_json(info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ds9_utils", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")

    down = commands.add_parser("download", help="download the transcripts into the cache")
    down.add_argument("--base-url", help="site root (default $DS9_BASE_URL or http://www.chakoteya.net/)")
    down.add_argument("--data-dir", type=Path, help="cache folder (default $DS9_DATA_DIR or data/)")
    down.add_argument("--delay", type=float, help="seconds between requests (default 1)")
    down.set_defaults(run=cmd_download)

    corpus = commands.add_parser("corpus", help="parse the cached pages into the training corpus and its split")
    corpus.add_argument("--data-dir", type=Path, help="cache folder (default $DS9_DATA_DIR or data/)")
    corpus.set_defaults(run=cmd_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "data_dir", None) is not None:
        args.data_dir = args.data_dir.expanduser().resolve()
    try:
        return args.run(args)
    except (DownloadError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything written so far is complete; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
