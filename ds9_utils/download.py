"""Download the DS9 transcripts politely, and cache every good page exactly as it arrived.

The site is a small fan archive, so we behave like a careful reader rather than a crawler:
one HTTP session, a User-Agent that names the project, a pause between requests, time-outs on every
request, and retries with exponential backoff only for failures that a retry can fix (connection errors,
time-outs, truncated bodies, 429 and 5xx; a 429's ``Retry-After`` is honoured): urllib3's ``Retry`` does
them, and only what it lacks is done here. Everything one page costs (attempts, waits, reads) counts against
one wall-clock deadline, which no server can stretch, not even one that sends a byte a second; when several
pages in a row fail that way the site is taken to be down and the run stops with one line that says what to
do. A 404 is not retried: the
page is skipped and reported. Redirects are followed on the site's own host only.

Only good pages are cached: a transcript must hold at least one ``NAME: text`` line and the index must link
transcripts. A page that fails the check (an empty or garbled answer) is reported and not cached, so the
next run asks for it again; a cached page that fails it (left by an older version) is fetched again.

Pages are cached under ``data_dir()/chakoteya/DS9/`` in the site's own layout. Each file is written to a
temporary name and renamed into place, so an interrupted run never leaves half a page, and a re-run only
fetches what is missing. Only links of the exact form ``NNN.htm`` are followed, and every path is checked to
stay inside the cache folder, whatever the index says.
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.retry import Retry

from . import __version__, settings
from .files import write_atomically
from .parse import decode_page, parse_episode, parse_index
from .progress import progress_bar
from .settings import pages_dir  # the data folder's layout is decided in settings

USER_AGENT = (
    f"ds9-llm-from-zero/{__version__} (+{settings.COURSE_URL}; educational course; polite single-threaded downloader)"
)
INDEX_PAGE = "episodes.htm"
PAGE_NAME = re.compile(r"^\d{3}\.htm$")
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
# Failures a retry can fix: refused or reset connections, time-outs, and bodies cut short.
RETRYABLE_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
MAX_REDIRECTS = 5
MAX_PAGE_BYTES = 5_000_000  # the largest transcript is under 100 kB; a page this big is not one


class DownloadError(RuntimeError):
    """A download problem the user can act on; the message says what to do."""


class PageFailed(Exception):
    """One page could not be had; the message is the reason reported for it.

    ``retryable`` failures (no answer, a reset, a 5xx...) say the site is not answering properly; the
    others (a 404, a redirect off the site, a page that is not a transcript) say only that page is bad.
    """

    def __init__(self, reason: str, *, retryable: bool = False):
        super().__init__(reason)
        self.retryable = retryable


class _BodyCutShort(Exception):
    """The answer's body broke off (a reset, a stall, fewer bytes than its Content-Length): worth a retry."""

    def __init__(self, reason: str, *, retries_used: int):
        super().__init__(reason)
        self.retries_used = retries_used  # the retries urllib3 made before this answer came


@dataclass
class DownloadConfig:
    """How politely and how persistently to download."""

    delay: float | None = None  # seconds between two requests; None: $DS9_DOWNLOAD_DELAY or one second
    connect_timeout: float = 10.0
    read_timeout: float = 20.0  # the longest silence we wait through in one read
    retries: int = 3  # extra attempts after the first
    backoff: float = 1.0  # first retry waits this long, then 2x, 4x, ...
    page_deadline: float = 30.0  # at most this long on one page, attempts and waits included
    give_up_after: int = 3  # this many pages in a row that fail retryably: the site is down, stop

    def __post_init__(self) -> None:
        self.delay = settings.download_delay(self.delay)
        for name in ("connect_timeout", "read_timeout", "page_deadline"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"DownloadConfig {name}={value!r}: use a number of seconds above 0")
        if self.retries < 0 or self.give_up_after < 1 or not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ValueError(
                f"DownloadConfig retries={self.retries!r}, give_up_after={self.give_up_after!r}, "
                f"backoff={self.backoff!r}: use retries >= 0, give_up_after >= 1 and backoff >= 0 seconds"
            )


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


def cache_path(folder: Path, page: str) -> Path:
    """The cache file for one page, refusing any name that could escape the cache folder."""
    if page != INDEX_PAGE and not PAGE_NAME.match(page):
        raise DownloadError(f"refusing to cache {page!r}: only {INDEX_PAGE} and NNN.htm pages are stored")
    path = (folder / page).resolve()
    if path.parent != folder.resolve():
        raise DownloadError(f"refusing to write {path}: it is outside the cache folder {folder}")
    return path


# ------------------------------------------------------------------------------------ is it a good page?


def transcript_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a transcript page we can use, or ``None`` when it is one.

    A transcript is whatever the parser reads at least one ``NAME: text`` line from: an empty answer, an
    error page or random bytes read as none, and caching them would hide the page from the next run.
    """
    if not raw.strip():
        return "the page is empty"
    try:
        episode = parse_episode(decode_page(raw), number=0)
    except Exception as error:  # html.parser raises on some garbled markup (AssertionError up to 3.12)
        return f"the page is not readable HTML ({type(error).__name__})"
    if not any(line.kind == "dialogue" for line in episode.lines):
        return f"the page holds no transcript (no NAME: line in {len(raw)} bytes)"
    return None


def index_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not the episode index, or ``None`` when it links at least one NNN.htm transcript."""
    return None if parse_index(decode_page(raw)) else "the index links no NNN.htm transcripts"


# ------------------------------------------------------------------------------------- fetching politely


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _host_and_port(url: str) -> tuple[str | None, int | None] | None:
    """Where an http(s) address points (``https://`` on the same host counts as the same site); else None."""
    parts = urlsplit(url)
    try:
        return (parts.hostname, parts.port) if parts.scheme in ("http", "https") else None
    except ValueError:  # a port that is not a number
        return None


class _OutOfTime(Exception):
    """urllib3 was about to wait for a retry that would end past the page's deadline; the message is why."""


class _DeadlineRetry(Retry):
    """urllib3's ``Retry`` (status retries, backoff, ``Retry-After``) that never waits past a deadline.

    Two changes only: the first retry already waits ``backoff_factor`` (urllib3 retries at once), so a
    failing server is never asked twice in the same instant, and a wait that would end past ``deadline``
    (a ``time.monotonic()`` value) is not made: ``_OutOfTime`` says why instead.
    """

    deadline = math.inf

    def new(self, **kw: Any) -> _DeadlineRetry:
        retry = super().new(**kw)
        retry.deadline = self.deadline
        return retry

    def get_backoff_time(self) -> float:
        errors = len(list(takewhile(lambda attempt: attempt.redirect_location is None, reversed(self.history))))
        return 0.0 if errors == 0 else min(self.backoff_max, self.backoff_factor * 2 ** (errors - 1))

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or time.monotonic() >= self.deadline

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        asked = self.get_retry_after(response) if response is not None and self.respect_retry_after_header else None
        wait = self.get_backoff_time() if asked is None else asked
        if time.monotonic() + wait >= self.deadline:
            if response is not None:
                raise _OutOfTime(f"HTTP {response.status} {response.reason}")
            last_error = self.history[-1].error if self.history else None
            raise _OutOfTime(_describe(last_error) if last_error is not None else "no answer")
        super().sleep(response)


class _Watchdog:
    """Cuts the connection in use when a page's deadline passes, whatever the server is doing.

    Socket time-outs bound a silence, not a slow answer: a server that sends one byte a second resets
    them with every byte. So a timer thread shuts the current connection's socket down at the deadline,
    which ends the read that waits on it at once; the fetcher then reports the deadline.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: HTTPConnection | None = None
        self._timer: threading.Timer | None = None
        self.expired = False

    def use(self, connection: HTTPConnection) -> None:
        """The connection the next request goes out on (called by the connection itself)."""
        with self._lock:
            self._connection = connection

    def start(self, seconds: float) -> None:
        self.expired = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._connection = None

    def _cut(self) -> None:
        with self._lock:
            if self._timer is None:  # the page finished in the meantime
                return
            self.expired = True
            sock = getattr(self._connection, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    pass


def _watched_adapter(watchdog: _Watchdog) -> HTTPAdapter:
    """requests' ``HTTPAdapter`` whose connections tell ``watchdog`` when they send a request."""

    def watched(connection_class: type[HTTPConnection]) -> type[HTTPConnection]:
        def request(self, *args, **kwargs) -> None:
            watchdog.use(self)
            connection_class.request(self, *args, **kwargs)

        return type(f"Watched{connection_class.__name__}", (connection_class,), {"request": request})

    pools = {
        "http": type("WatchedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": watched(HTTPConnection)}),
        "https": type("WatchedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": watched(HTTPSConnection)}),
    }

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            """Through an HTTP proxy ($HTTP_PROXY) too; a SOCKS proxy's pools are its own, left unwatched."""
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return WatchedAdapter()


class PoliteFetcher:
    """One ``requests.Session`` that waits between requests and retries what a retry can fix.

    urllib3's ``Retry`` retries refused and reset connections, time-outs and the statuses in
    ``RETRYABLE_STATUS``, with exponential backoff and the server's ``Retry-After``. What it cannot do is
    done here: one wall-clock deadline for the whole page (``_Watchdog``), the size cap, and a retry of a
    body cut short (urllib3 hands a streamed body over before reading it).
    """

    def __init__(self, config: DownloadConfig, site: str):
        self.config = config
        self.site_host = _host_and_port(site)  # redirects may not leave it
        self.watchdog = _Watchdog()
        self.adapter = _watched_adapter(self.watchdog)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        self._last_request = 0.0

    def fetch(self, url: str) -> bytes:
        """The body of ``url``; raises ``PageFailed`` with the reason when every attempt failed.

        All attempts and the waits between them share one wall-clock deadline, ``config.page_deadline``:
        a server that says nothing, or sends one byte at a time, costs that much time at most.
        """
        cfg = self.config
        deadline = time.monotonic() + cfg.page_deadline
        retries_left, failures = cfg.retries, 0
        self.watchdog.start(cfg.page_deadline)
        try:
            while True:
                self._wait_turn()
                try:
                    return self._attempt(url, deadline, retries_left)
                except _BodyCutShort as failure:  # the one failure urllib3 cannot retry: a body cut short
                    retries_left -= failure.retries_used + 1
                    failures += failure.retries_used + 1
                    wait = cfg.backoff * 2 ** (failures - 1)
                    if retries_left < 0 or time.monotonic() + wait >= deadline:
                        raise PageFailed(str(failure), retryable=True) from failure
                    time.sleep(wait)
        finally:
            self.watchdog.stop()

    def _wait_turn(self) -> None:
        pause = self.config.delay - (time.monotonic() - self._last_request)
        if pause > 0:
            time.sleep(pause)
        self._last_request = time.monotonic()

    def _attempt(self, url: str, deadline: float, retries: int) -> bytes:
        """One request (urllib3 retries it), following redirects on the site's own host, and its body."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(url, deadline, retries)
            if not response.is_redirect:
                break
            response.close()
            url = urljoin(url, response.headers["Location"])
            if _host_and_port(url) != self.site_host:
                raise PageFailed(f"redirected off the site to {url}; not followed")
        else:
            raise PageFailed(f"more than {MAX_REDIRECTS} redirects")
        with response:
            status = f"HTTP {response.status_code} {response.reason}"
            if response.status_code in RETRYABLE_STATUS:  # urllib3 retried it as often as it could
                raise PageFailed(status, retryable=True)
            if response.status_code != 200:
                raise PageFailed(status)
            return self._read_body(response, deadline)

    def _out_of_time(self) -> PageFailed:
        return PageFailed(f"no whole page within {self.config.page_deadline:g} s", retryable=True)

    def _request(self, url: str, deadline: float, retries: int) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._out_of_time()
        timeout = (min(self.config.connect_timeout, remaining), min(self.config.read_timeout, remaining))
        retry = _DeadlineRetry(
            total=retries,
            status_forcelist=RETRYABLE_STATUS,
            backoff_factor=self.config.backoff,
            raise_on_status=False,  # the last answer is returned, and reported with its status
        )
        retry.deadline = deadline
        self.adapter.max_retries = retry
        try:
            return self.session.get(url, timeout=timeout, stream=True, allow_redirects=False)
        except _OutOfTime as error:
            reason = f"{error}; no time left to retry within {self.config.page_deadline:g} s"
            raise PageFailed(reason, retryable=True) from error
        except RETRYABLE_ERRORS as error:
            if self.watchdog.expired:
                raise self._out_of_time() from error
            raise PageFailed(_describe(error), retryable=True) from error
        except requests.RequestException as error:
            raise PageFailed(_describe(error)) from error

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """The body, read in pieces so that its size is checked as it grows."""
        body = bytearray()
        try:
            for piece in response.iter_content(chunk_size=16_384):
                body += piece
                if len(body) > MAX_PAGE_BYTES:
                    raise PageFailed(f"the page is larger than {MAX_PAGE_BYTES:,} bytes")
        except RETRYABLE_ERRORS as error:  # a stall, a reset, a body shorter than its Content-Length, the deadline
            if self.watchdog.expired or time.monotonic() >= deadline:
                raise self._out_of_time() from error
            retried = getattr(response.raw, "retries", None)  # what urllib3 spent before this answer came
            raise _BodyCutShort(_describe(error), retries_used=len(retried.history) if retried else 0) from error
        except requests.RequestException as error:
            raise PageFailed(_describe(error)) from error
        return bytes(body)

    def close(self) -> None:
        self.session.close()


# ---------------------------------------------------------------------------------------------- the run


def _cached_good(path: Path, problem: Callable[[bytes], str | None]) -> bool:
    """True when ``path`` holds a good page; a bad one (left by an older version) is removed, to fetch again."""
    if not path.exists():
        return False
    if problem(path.read_bytes()) is None:
        return True
    path.unlink()
    return False


def _fetch_good(fetcher: PoliteFetcher, url: str, problem: Callable[[bytes], str | None]) -> bytes:
    """The page at ``url`` when ``problem`` finds none; otherwise ``PageFailed`` says what is wrong with it."""
    body = fetcher.fetch(url)
    reason = problem(body)
    if reason is not None:
        raise PageFailed(reason)
    return body


def download_transcripts(
    base_url: str | None = None,
    data_dir: Path | None = None,
    config: DownloadConfig | None = None,
    *,
    progress: bool = True,
) -> DownloadReport:
    """Fetch the episode index and every transcript it links into the cache; return what happened.

    Good pages already in the cache are not fetched again. Raises ``DownloadError`` when the index cannot
    be had or the site stops answering; other failed pages are reported, not raised, and the next run
    fetches them again.
    """
    config = config or DownloadConfig()
    site = settings.base_url(base_url) + "DS9/"
    folder = pages_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = DownloadReport()
    started = time.monotonic()
    fetcher = PoliteFetcher(config, site)
    try:
        index_file = cache_path(folder, INDEX_PAGE)
        if not _cached_good(index_file, index_problem):
            try:
                write_atomically(index_file, _fetch_good(fetcher, site + INDEX_PAGE, index_problem))
            except PageFailed as failure:
                raise DownloadError(
                    f"could not get the episode index {site + INDEX_PAGE} ({failure}); check your connection, "
                    "or point --base-url / DS9_BASE_URL at the site's root (the folder that holds DS9/)"
                ) from failure
        pages = sorted({link.href for link in parse_index(decode_page(index_file.read_bytes()))})

        failures_in_a_row = 0  # pages that failed retryably, one after another: is the site down?
        for page in progress_bar(pages, desc="transcripts", unit="page", disable=not progress):
            target = cache_path(folder, page)
            if _cached_good(target, transcript_problem):
                report.cached.append(page)
                continue
            try:
                write_atomically(target, _fetch_good(fetcher, site + page, transcript_problem))
            except PageFailed as failure:
                report.failed.append({"page": page, "reason": str(failure)})
                failures_in_a_row = failures_in_a_row + 1 if failure.retryable else 0
                if failures_in_a_row >= config.give_up_after:
                    raise DownloadError(
                        f"{site} stopped answering: {failures_in_a_row} pages in a row failed (last: {page}, "
                        f"{failure}); check your connection and --base-url / DS9_BASE_URL, then run again: "
                        "the pages already cached are kept and only the missing ones are fetched"
                    ) from failure
                continue
            failures_in_a_row = 0
            report.downloaded.append(page)
    finally:
        fetcher.close()
        report.seconds = time.monotonic() - started
    return report
