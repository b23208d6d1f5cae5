"""Fault injection: the downloader against servers that go wrong in every way we know of, on 127.0.0.1.

The site is a copy of a few real pages of the mirror. Each fault happens on the first request for a page
only, as a passing hiccup does; whatever the first run could not get must be reported with its reason and
must not be cached, and a second run must fetch exactly those pages. A server that never answers must cost
a bounded time, and a site that stops answering must stop the run with one line that says what to do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import (
    LoopbackServer,
    RelayProxyHandler,
    SilentServer,
    make_drip_server,
    make_first_request_fault_server,
    page_html,
    write_site,
)

from ds9_utils.download import DownloadConfig, DownloadError, download_transcripts, pages_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The fault each page of the copied site suffers on its first request; the pages not listed are healthy.
FAULTS = {
    "401.htm": "empty",
    "403.htm": "random",
    "404.htm": "stall",  # longer than the read time-out
    "405.htm": "reset",
    "406.htm": "truncate",  # Content-Length larger than the body
    "407.htm": "429",  # with Retry-After: 1
    "408.htm": "500",
    "409.htm": "503",
    "411.htm": "redirect off site",  # to http://example.invalid/: must not be followed
    "412.htm": "redirect on site",  # to /DS9/412.htm?moved=1 on the same server: followed
}
HEALTHY = ["413.htm", "414.htm"]
# Faults a retry within the same run gets past; the others are answers about the page itself.
RETRYABLE = {"stall", "reset", "truncate", "429", "500", "503"}
# Links in the index that point outside the site's DS9/ folder, or at something that is not a page.
ESCAPING_LINKS = ("../../etc/passwd", "/abs.htm", "..%2f..%2f402.htm", "005.htm?x=", "http://example.invalid/415.htm")

REQUESTED = re.compile(r"^/DS9/(episodes\.htm|\d{3}\.htm(\?moved=1)?)$")


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture
def copied_site(mirror_dir, tmp_path) -> Path:
    """A few real pages of the mirror, with an index that links them and the escaping links above."""
    pages = {name: (mirror_dir / "DS9" / name).read_bytes() for name in [*FAULTS, *HEALTHY]}
    return write_site(tmp_path / "site", pages, ESCAPING_LINKS)


@pytest.mark.parametrize("retries", [0, 2])
def test_every_fault_is_reported_not_cached_and_only_those_pages_are_fetched_again(copied_site, tmp_path, retries):
    config = DownloadConfig(
        delay=0.0, connect_timeout=2.0, read_timeout=0.5, retries=retries, backoff=0.05, give_up_after=len(FAULTS)
    )
    server, log = make_first_request_fault_server(copied_site, FAULTS, stall_seconds=1.5)
    data = tmp_path / "data"
    try:
        first = download_transcripts(server.url, data, config, progress=False)
        second = download_transcripts(server.url, data, config, progress=False)
    finally:
        server.close()

    # The first run: every page it could not get is reported with a reason, and is not in the cache.
    expected_failures = {page for page, fault in FAULTS.items() if retries == 0 or fault not in RETRYABLE}
    expected_failures.discard("412.htm")  # a redirect on the site's own host is followed
    reasons = {item["page"]: item["reason"] for item in first.failed}
    assert set(reasons) == expected_failures
    assert reasons["401.htm"] == "the page is empty"
    assert "no transcript" in reasons["403.htm"]
    assert "off the site" in reasons["411.htm"] and "example.invalid" in reasons["411.htm"]
    if retries == 0:
        assert "Timeout" in reasons["404.htm"] or "timed out" in reasons["404.htm"], reasons["404.htm"]
        assert "429" in reasons["407.htm"] and "500" in reasons["408.htm"] and "503" in reasons["409.htm"]
        assert "ConnectionError" in reasons["405.htm"] and "ChunkedEncodingError" in reasons["406.htm"]
    assert all(reason for reason in reasons.values())
    assert sorted(first.downloaded) == sorted(set(FAULTS) - expected_failures | set(HEALTHY))

    # The second run, against the same server (healthy by now): exactly the failed pages, and all of them.
    assert sorted(second.downloaded) == sorted(expected_failures) and second.failed == []
    assert sorted(second.cached) == sorted(first.downloaded)

    # The cache is byte for byte the good site, with no temporary file left behind and nothing outside it.
    good_site = files_under(copied_site / "DS9")
    assert files_under(data) == {f"chakoteya/DS9/{name}": body for name, body in good_site.items()}
    assert all(REQUESTED.match(path) for path in log.paths), log.paths
    assert "example.invalid" not in "".join(log.paths)


def test_a_server_that_never_answers_costs_one_page_deadline_then_one_clear_line(tmp_path):
    config = DownloadConfig(delay=0.0, read_timeout=0.4, retries=10, backoff=0.05, page_deadline=1.5)
    server = SilentServer()
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError) as raised:
            download_transcripts(server.url, tmp_path, config, progress=False)
    finally:
        server.close()
    seconds = time.monotonic() - started
    # Without the deadline, 11 attempts of 0.4 s plus the backoff between them would take 100 s.
    assert 1.0 <= seconds < 3.0, seconds
    assert 2 <= server.log.attempts["episodes.htm"] <= 4
    message = str(raised.value)
    assert "\n" not in message and "episodes.htm" in message and "DS9_BASE_URL" in message
    assert files_under(tmp_path) == {}


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_server_that_sends_one_byte_a_second_is_cut_off_at_the_page_deadline(tmp_path, where):
    """Each byte resets the read time-out (20 s here), so only a wall-clock deadline ends the page."""
    config = DownloadConfig(delay=0.0, retries=3, backoff=0.05, page_deadline=1.5)
    server, log = make_drip_server(where)
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError) as raised:
            download_transcripts(server.url, tmp_path, config, progress=False)
    finally:
        server.close()
    seconds = time.monotonic() - started
    assert 1.4 <= seconds < 3.0, seconds  # the page has some 300 bytes: 300 s without the deadline
    assert log.attempts["episodes.htm"] == 1  # no retry fits in what is left of the deadline
    assert "no whole page within 1.5 s" in str(raised.value) and "\n" not in str(raised.value)
    assert files_under(tmp_path) == {}


def test_through_an_http_proxy_one_byte_a_second_is_cut_off_at_the_page_deadline_too(tmp_path, monkeypatch):
    server, log = make_drip_server("body")
    proxy = LoopbackServer(RelayProxyHandler)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    config = DownloadConfig(delay=0.0, retries=3, backoff=0.05, page_deadline=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="no whole page within 1.5 s"):
            download_transcripts(server.url, tmp_path, config, progress=False)
    finally:
        proxy.close()
        server.close()
    assert 1.4 <= time.monotonic() - started < 3.0 and log.attempts["episodes.htm"] == 1


def test_a_retry_after_longer_than_the_page_deadline_is_not_waited_for(tmp_path):
    """A 429 asks for 1 s; the page has 0.5 s: the page fails at once, saying why, instead of sleeping past it."""
    write_site(tmp_path / "site", {"401.htm": page_html("401.htm"), "402.htm": page_html("402.htm")})
    server, log = make_first_request_fault_server(tmp_path / "site", {"401.htm": "429"})
    config = DownloadConfig(delay=0.0, retries=3, backoff=0.05, page_deadline=0.5)
    started = time.monotonic()
    try:
        report = download_transcripts(server.url, tmp_path / "data", config, progress=False)
    finally:
        server.close()
    assert time.monotonic() - started < 1.0 and log.attempts["401.htm"] == 1
    assert report.failed == [
        {"page": "401.htm", "reason": "HTTP 429 Too Many Requests; no time left to retry within 0.5 s"}
    ]
    assert report.downloaded == ["402.htm"]


def test_a_site_that_stops_answering_stops_the_run_after_a_few_pages(tmp_path):
    """The index is cached from an earlier run; then the site goes silent. Not 165 pages of waiting."""
    pages = {f"{number}.htm": page_html(f"{number}.htm") for number in range(401, 421)}
    write_site(tmp_path / "site", pages)
    cache = pages_dir(tmp_path / "data")
    cache.mkdir(parents=True)
    (cache / "episodes.htm").write_bytes((tmp_path / "site" / "DS9" / "episodes.htm").read_bytes())
    (cache / "401.htm").write_bytes(pages["401.htm"])

    config = DownloadConfig(delay=0.0, read_timeout=0.3, retries=1, backoff=0.05, page_deadline=1.0, give_up_after=3)
    server = SilentServer()
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError) as raised:
            download_transcripts(server.url, tmp_path / "data", config, progress=False)
    finally:
        server.close()
    seconds = time.monotonic() - started
    assert set(server.log.attempts) == {"402.htm", "403.htm", "404.htm"}  # then it stopped
    assert seconds < 3 * 1.0 + 1.0, seconds
    message = str(raised.value)
    assert "\n" not in message and "3 pages in a row" in message
    assert "--base-url" in message and "DS9_BASE_URL" in message and "run again" in message
    assert sorted(path.name for path in cache.iterdir()) == ["401.htm", "episodes.htm"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ds9_utils", *args],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(), cwd=PROJECT_ROOT,
    )  # fmt: skip


def last_json_line(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_an_empty_page_is_fetched_again_and_the_corpus_has_every_episode(copied_site, tmp_path):
    """The run the issue describes: an empty 200 used to be cached, "all cached" next time, then `corpus` failed."""
    server, _ = make_first_request_fault_server(copied_site, {"401.htm": "empty", "403.htm": "random"})
    data = str(tmp_path / "D")
    try:
        first = last_json_line(run_cli("download", "--base-url", server.url, "--data-dir", data, "--delay", "0"))
        second = last_json_line(run_cli("download", "--base-url", server.url, "--data-dir", data, "--delay", "0"))
    finally:
        server.close()
    pages = len(FAULTS) + len(HEALTHY)
    assert first["downloaded"] == pages - 2 and first["cached"] == 0
    assert {item["page"] for item in first["failed"]} == {"401.htm", "403.htm"}
    assert (second["downloaded"], second["cached"], second["failed"]) == (2, pages - 2, [])
    corpus = last_json_line(run_cli("corpus", "--data-dir", data))
    assert corpus["episodes"] == pages
