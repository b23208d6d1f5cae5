"""Download the DS9 transcripts politely, and cache every page exactly as it arrived.

The site is a small fan archive, so we behave like a careful reader rather than a crawler:
one HTTP session, a User-Agent that names the project, a pause between requests, a timeout on every
request, and retries with exponential backoff only for failures that a retry can fix (connection errors,
time-outs, truncated bodies, 429 and 5xx; a 429's ``Retry-After`` is honoured). A 404 is not retried: the
page is skipped and reported.

Pages are cached under ``data_dir()/chakoteya/DS9/`` in the site's own layout. Each file is written to a
temporary name and renamed into place, so an interrupted run never leaves half a page, and a re-run only
fetches what is missing. Only links of the exact form ``NNN.htm`` are followed, and every path is checked to
stay inside the cache folder, whatever the index says.
"""

from __future__ import annotations

import email.utils
import errno
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tqdm.auto import tqdm

from . import __version__
from .parse import decode_page, parse_index
from .settings import base_url as default_base_url
from .settings import data_dir as default_data_dir
from .settings import download_delay

USER_AGENT = f"ds9-lets-build-an-llm/{__version__} (educational course; polite single-threaded downloader)"
INDEX_PAGE = "episodes.htm"
PAGE_NAME = re.compile(r"^\d{3}\.htm$")
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
# Failures a retry can fix: refused or reset connections, time-outs, and bodies cut short.
RETRYABLE_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DownloadError(RuntimeError):
    """A download problem the user can act on; the message says what to do."""


@dataclass
class DownloadConfig:
    """How politely and how persistently to download."""

    delay: float = field(default_factory=download_delay)  # seconds between two requests to the site
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 4  # extra attempts after the first
    backoff: float = 1.0  # first retry waits this long, then 2x, 4x, ...
    max_retry_after: float = 120.0  # never wait longer than this for a Retry-After


@dataclass
class DownloadReport:
    """What a download run did: pages fetched, pages already cached, pages that failed and why."""

    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "downloaded": len(self.downloaded),
            "cached": len(self.cached),
            "failed": self.failed,
            "seconds": round(self.seconds, 2),
        }


def pages_dir(data_dir: Path | None = None) -> Path:
    """The folder that mirrors the site's ``DS9/`` pages inside the data folder."""
    return Path(data_dir or default_data_dir()) / "chakoteya" / "DS9"


def cache_path(folder: Path, page: str) -> Path:
    """The cache file for one page, refusing any name that could escape the cache folder."""
    if page != INDEX_PAGE and not PAGE_NAME.match(page):
        raise DownloadError(f"refusing to cache {page!r}: only {INDEX_PAGE} and NNN.htm pages are stored")
    path = (folder / page).resolve()
    if path.parent != folder.resolve():
        raise DownloadError(f"refusing to write {path}: it is outside the cache folder {folder}")
    return path


def write_atomically(path: Path, content: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place: readers never see half a file.

    Every file the course writes (pages, corpus, tokenizers, checkpoints, adapters) goes through here. An
    interruption (an error, Ctrl-C) removes the temporary file and leaves any earlier ``path`` untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise DownloadError(
                f"the disk is full while writing {path}; free some space or point DS9_DATA_DIR "
                "(or --data-dir) at a disk with room"
            ) from error
        raise


class PoliteFetcher:
    """One ``requests.Session`` that waits between requests and retries what a retry can fix."""

    def __init__(self, config: DownloadConfig):
        self.config = config
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._last_request = 0.0

    def _wait_turn(self) -> None:
        pause = self.config.delay - (time.monotonic() - self._last_request)
        if pause > 0:
            time.sleep(pause)
        self._last_request = time.monotonic()

    def _retry_after(self, response: requests.Response, default: float) -> float:
        header = response.headers.get("Retry-After", "").strip()
        if header.isdigit():
            wait = float(header)
        elif header:
            try:
                wait = email.utils.parsedate_to_datetime(header).timestamp() - time.time()
            except (TypeError, ValueError):
                wait = default
        else:
            wait = default
        return min(max(wait, 0.0), self.config.max_retry_after)

    def fetch(self, url: str) -> bytes:
        """Return the body of ``url``. Raises ``requests.HTTPError`` for a 404 or when every retry failed."""
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            backoff = cfg.backoff * 2**attempt
            last_attempt = attempt == cfg.retries
            self._wait_turn()
            try:
                response = self.session.get(url, timeout=(cfg.connect_timeout, cfg.read_timeout))
                if response.status_code in RETRYABLE_STATUS and not last_attempt:
                    time.sleep(self._retry_after(response, backoff))
                    continue
                response.raise_for_status()
                return response.content  # requests raises if the body is shorter than Content-Length
            except RETRYABLE_ERRORS:
                if last_attempt:
                    raise
                time.sleep(backoff)
        raise AssertionError("unreachable: the last attempt either returns or raises")

    def close(self) -> None:
        self.session.close()


def _describe(error: Exception) -> str:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    return f"{type(error).__name__}: {error}"


def download_transcripts(
    base_url: str | None = None,
    data_dir: Path | None = None,
    config: DownloadConfig | None = None,
    *,
    progress: bool = True,
) -> DownloadReport:
    """Fetch the episode index and every transcript it links into the cache; return what happened.

    Pages already in the cache are not fetched again. Raises ``DownloadError`` when the site cannot be
    reached or its index lists no transcripts; individual failed pages are reported, not raised.
    """
    config = config or DownloadConfig()
    root = base_url or default_base_url()
    root = root if root.endswith("/") else root + "/"
    site = root + "DS9/"
    folder = pages_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = DownloadReport()
    started = time.monotonic()
    fetcher = PoliteFetcher(config)
    try:
        index_file = cache_path(folder, INDEX_PAGE)
        if index_file.exists():
            index_html = decode_page(index_file.read_bytes())
        else:
            try:
                raw_index = fetcher.fetch(site + INDEX_PAGE)
            except (requests.RequestException, OSError) as error:
                raise DownloadError(
                    f"could not fetch the episode index {site + INDEX_PAGE} ({_describe(error)}); "
                    "check your connection, or point --base-url / DS9_BASE_URL at a mirror of the site"
                ) from error
            index_html = decode_page(raw_index)
            if not parse_index(index_html):
                raise DownloadError(
                    f"the episode index {site + INDEX_PAGE} links no NNN.htm transcripts; "
                    "is --base-url / DS9_BASE_URL the site's root (the folder that holds DS9/)?"
                )
            write_atomically(index_file, raw_index)
        links = parse_index(index_html)
        if not links:
            raise DownloadError(
                f"the cached index {index_file} links no NNN.htm transcripts; delete it and download again"
            )
        pages = sorted({link.href for link in links})
        for page in tqdm(pages, desc="transcripts", unit="page", disable=not progress):
            target = cache_path(folder, page)
            if target.exists():
                report.cached.append(page)
                continue
            try:
                body = fetcher.fetch(site + page)
            except (requests.RequestException, OSError) as error:
                report.failed.append({"page": page, "reason": _describe(error)})
                continue
            write_atomically(target, body)
            report.downloaded.append(page)
    finally:
        fetcher.close()
        report.seconds = time.monotonic() - started
    return report
