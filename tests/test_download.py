"""The downloader against real HTTP servers on 127.0.0.1: the shared mirror, and a server that misbehaves."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from servers import (
    FAULT_SCRIPT,
    make_fault_server,
    make_first_request_fault_server,
    page_html,
    serve_folder,
    write_site,
)

from ds9_utils import download
from ds9_utils.download import DownloadConfig, DownloadError, download_transcripts, pages_dir

FAST = DownloadConfig(delay=0.0, connect_timeout=2.0, read_timeout=0.5, retries=2, backoff=0.05)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def small_site(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A made-up site of four transcript pages in a folder, and the pages' bytes."""
    pages = {name: page_html(name) for name in ("401.htm", "402.htm", "403.htm", "404.htm")}
    return write_site(tmp_path / "site", pages), pages


@pytest.fixture
def faulty_site():
    server, log = make_fault_server()
    yield server.url, log.attempts, log.times, log.user_agents
    server.close()


def test_mirror_downloads_every_page_byte_for_byte_then_only_what_is_missing(mirror_dir, mirror_url, tmp_path):
    report = download_transcripts(mirror_url, tmp_path, DownloadConfig(delay=0.0), progress=False)
    mirror_pages = sorted(p.name for p in (mirror_dir / "DS9").glob("[0-9][0-9][0-9].htm"))
    assert len(mirror_pages) == 165
    assert sorted(report.downloaded) == mirror_pages
    assert report.failed == [] and report.cached == []
    cache = pages_dir(tmp_path)
    for name in mirror_pages + ["episodes.htm"]:
        assert (cache / name).read_bytes() == (mirror_dir / "DS9" / name).read_bytes(), name
    assert all_files(tmp_path) == {f"chakoteya/DS9/{name}" for name in mirror_pages + ["episodes.htm"]}

    # An interrupted run: two pages lost. A re-run fetches exactly those and nothing else.
    (cache / mirror_pages[0]).unlink()
    (cache / mirror_pages[-1]).unlink()
    again = download_transcripts(mirror_url, tmp_path, DownloadConfig(delay=0.0), progress=False)
    assert sorted(again.downloaded) == [mirror_pages[0], mirror_pages[-1]]
    assert len(again.cached) == 163 and again.failed == []


def test_each_fault_is_retried_or_skipped_and_reported(faulty_site, tmp_path):
    url, attempts, times, _ = faulty_site
    report = download_transcripts(url, tmp_path, FAST, progress=False)
    cache = pages_dir(tmp_path)

    # Retried until they succeeded: a 500, a 429, a stalled response, a reset connection, one truncated body.
    assert sorted(report.downloaded) == ["901.htm", "902.htm", "903.htm", "906.htm", "907.htm"]
    for name in report.downloaded:
        assert (cache / name).read_bytes() == page_html(name), name
    assert attempts["901.htm"] == 2 and attempts["902.htm"] == 2 and attempts["903.htm"] == 2
    assert attempts["906.htm"] == 2 and attempts["907.htm"] == 2
    # The 429 said Retry-After: 1, and we waited that long although our backoff is 0.05 s.
    assert times["902.htm"][1] - times["902.htm"][0] >= 0.95

    # Skipped and reported: a 404 (never retried) and a body that is always cut short (retried, then given up).
    failed = {item["page"]: item["reason"] for item in report.failed}
    assert set(failed) == {"904.htm", "905.htm"}
    assert "404" in failed["905.htm"] and attempts["905.htm"] == 1
    assert attempts["904.htm"] == FAST.retries + 1
    assert not (cache / "904.htm").exists() and not (cache / "905.htm").exists()

    # Nothing half-written, nothing outside the cache, whatever the index linked (../../x.htm and friends).
    assert all_files(tmp_path) == {f"chakoteya/DS9/{name}" for name in report.downloaded + ["episodes.htm"]}
    assert "x.htm" not in attempts and "passwd" not in attempts
    assert not (tmp_path.parent / "x.htm").exists()


def test_backoff_grows_exponentially(faulty_site, tmp_path):
    url, attempts, times, _ = faulty_site
    config = DownloadConfig(delay=0.0, read_timeout=2.0, retries=2, backoff=0.2)
    download_transcripts(url, tmp_path, config, progress=False)
    first, second, third = times["904.htm"]  # always truncated: three attempts
    assert second - first >= 0.2 and third - second >= 0.4


def test_polite_delay_between_requests(faulty_site, tmp_path):
    url, attempts, times, _ = faulty_site
    config = DownloadConfig(delay=0.3, read_timeout=3.0, retries=0, backoff=0.0)
    start = time.monotonic()
    download_transcripts(url, tmp_path, config, progress=False)
    requests_made = sum(attempts.values())
    assert requests_made == 1 + len(FAULT_SCRIPT)
    assert time.monotonic() - start >= 0.3 * (requests_made - 1)


def test_requests_name_the_project(faulty_site, tmp_path):
    url, _, _, user_agents = faulty_site
    download_transcripts(url, tmp_path, FAST, progress=False)
    assert user_agents and all(agent.startswith("ds9-llm-from-zero/") for agent in user_agents)
    assert all("(+https://github.com/louiscollinsjr/ds9-llm-from-zero;" in agent for agent in user_agents)


def test_unreachable_site_says_how_to_point_elsewhere(tmp_path):
    with pytest.raises(DownloadError, match="DS9_BASE_URL"):
        download_transcripts("http://127.0.0.1:9/", tmp_path, FAST, progress=False)
    assert all_files(tmp_path) == set()


def test_empty_index_is_an_error(tmp_path):
    site = tmp_path / "site"
    (site / "DS9").mkdir(parents=True)
    (site / "DS9" / "episodes.htm").write_text("<html><body>No episodes today.</body></html>")
    server = serve_folder(site)
    try:
        with pytest.raises(DownloadError, match="links no NNN.htm"):
            download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
    finally:
        server.close()
    assert not (tmp_path / "data" / "chakoteya" / "DS9" / "episodes.htm").exists()


def test_cache_path_refuses_escapes(tmp_path):
    for name in ["../x.htm", "../../x.htm", "/etc/passwd", "12.htm", "1234.htm", "401.html", "sub/401.htm"]:
        with pytest.raises(DownloadError):
            download.cache_path(tmp_path, name)
    assert download.cache_path(tmp_path, "401.htm") == (tmp_path / "401.htm").resolve()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ds9_utils", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_cli_download_reports_json_then_caches(mirror_url, tmp_path):
    first = run_cli("download", "--base-url", mirror_url, "--data-dir", str(tmp_path), "--delay", "0")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["downloaded"] == 165 and summary["cached"] == 0 and summary["failed"] == []
    second = run_cli("download", "--base-url", mirror_url, "--data-dir", str(tmp_path), "--delay", "0")
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["downloaded"] == 0 and summary["cached"] == 165


def test_cli_unreachable_site_is_one_clear_line_and_nonzero_exit(tmp_path):
    result = run_cli(
        "download", "--data-dir", str(tmp_path), "--delay", "0", env={"DS9_BASE_URL": "http://127.0.0.1:9/"}
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "--base-url" in lines[0] and "Traceback" not in result.stderr


def test_cli_when_every_page_fails_stderr_says_so_in_one_line_and_the_exit_is_1(tmp_path):
    site = write_site(tmp_path / "site", {"401.htm": page_html("401.htm"), "402.htm": page_html("402.htm")})
    for page in ("401.htm", "402.htm"):  # the index links them; the server answers 404
        (site / "DS9" / page).unlink()
    server = serve_folder(site)
    try:
        result = run_cli("download", "--base-url", server.url, "--data-dir", str(tmp_path / "data"), "--delay", "0")
    finally:
        server.close()
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "every page failed (2 of them" in lines[0] and "--base-url" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert [item["page"] for item in json.loads(result.stdout.strip().splitlines()[-1])["failed"]] == [
        "401.htm",
        "402.htm",
    ]


# ---------------------------------------------------------------------- only good pages reach the cache


def test_every_mirror_page_passes_the_checks_and_what_is_not_a_transcript_fails(mirror_dir):
    pages = sorted((mirror_dir / "DS9").glob("[0-9][0-9][0-9].htm"))
    assert len(pages) == 165
    assert [page.name for page in pages if download.transcript_problem(page.read_bytes())] == []
    index = (mirror_dir / "DS9" / "episodes.htm").read_bytes()
    assert download.index_problem(index) is None

    not_transcripts = {
        "empty": b"",
        "blank": b" \r\n\t",
        "random bytes": random.Random(1).randbytes(50_000),
        "an error page": b"<html><body><h1>503 Service Unavailable</h1><p>Try again later.</p></body></html>",
        "the index": index,
        "garbled markup": b"<![if foo[ <table><tr><td>ODO: Quark.</td></tr></table>",  # html.parser raises on it
    }
    for what, raw in not_transcripts.items():
        assert download.transcript_problem(raw), what
    assert download.index_problem(b"") and download.index_problem(pages[0].read_bytes())


def test_an_empty_or_garbled_page_is_reported_not_cached_and_fetched_on_the_next_run(small_site, tmp_path):
    site, pages = small_site
    server, log = make_first_request_fault_server(site, {"402.htm": "empty", "403.htm": "random"})
    try:
        first = download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
        cache = pages_dir(tmp_path / "data")
        assert sorted(first.downloaded) == ["401.htm", "404.htm"]
        reasons = {item["page"]: item["reason"] for item in first.failed}
        assert reasons == {"402.htm": "the page is empty", "403.htm": reasons["403.htm"]}
        assert "no transcript" in reasons["403.htm"]
        assert not (cache / "402.htm").exists() and not (cache / "403.htm").exists()
        assert log.attempts["402.htm"] == 1  # the server answered: nothing a retry in this run would fix

        second = download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
    finally:
        server.close()
    assert sorted(second.downloaded) == ["402.htm", "403.htm"] and second.failed == []
    assert sorted(second.cached) == ["401.htm", "404.htm"]
    assert {path.name: path.read_bytes() for path in cache.iterdir()} == {
        **pages,
        "episodes.htm": (site / "DS9" / "episodes.htm").read_bytes(),
    }


def test_a_bad_page_already_in_the_cache_is_fetched_again_not_counted_as_cached(small_site, tmp_path):
    site, pages = small_site
    cache = pages_dir(tmp_path / "data")
    cache.mkdir(parents=True)
    (cache / "episodes.htm").write_bytes((site / "DS9" / "episodes.htm").read_bytes())
    (cache / "401.htm").write_bytes(pages["401.htm"])
    (cache / "402.htm").write_bytes(b"")  # left by an older version of the downloader
    (cache / "403.htm").write_bytes(random.Random(3).randbytes(2000))
    server = serve_folder(site)
    try:
        report = download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
    finally:
        server.close()
    assert report.cached == ["401.htm"] and report.failed == []
    assert sorted(report.downloaded) == ["402.htm", "403.htm", "404.htm"]
    assert all((cache / name).read_bytes() == body for name, body in pages.items())


def test_an_index_that_links_nothing_is_never_cached_and_is_fetched_again(small_site, tmp_path):
    site, pages = small_site
    server, log = make_first_request_fault_server(site, {"episodes.htm": "empty"})
    index = pages_dir(tmp_path / "data") / "episodes.htm"
    try:
        with pytest.raises(DownloadError, match="links no NNN.htm"):
            download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
        assert not index.exists()

        index.write_bytes(b"<html><body>Under construction</body></html>")  # a bad index left in the cache
        report = download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
    finally:
        server.close()
    assert sorted(report.downloaded) == sorted(pages) and log.attempts["episodes.htm"] == 2
    assert index.read_bytes() == (site / "DS9" / "episodes.htm").read_bytes()


def test_a_downloaded_page_gets_the_usual_permissions_under_umask_022(small_site, tmp_path):
    site, pages = small_site
    server = serve_folder(site)
    previous = os.umask(0o022)
    try:
        download_transcripts(server.url, tmp_path / "data", FAST, progress=False)
    finally:
        os.umask(previous)
        server.close()
    cache = pages_dir(tmp_path / "data")
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in cache.iterdir()}
    assert modes == {name: oct(0o644) for name in [*pages, "episodes.htm"]}


# ------------------------------------------------------------------------------ the tests without a mirror

NETWORK_GUARD = """
import json, os, socket

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
reached = []
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def connect(self, address):
    if isinstance(address, tuple) and address[0] not in LOOPBACK:
        reached.append(str(address[0]))
        raise OSError("this test run may not leave 127.0.0.1")
    return _connect(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host not in LOOPBACK and host is not None:
        reached.append(str(host))
        raise OSError("this test run may not leave 127.0.0.1")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo


def pytest_sessionfinish(session):
    with open(os.environ["NETWORK_GUARD_REPORT"], "w") as report:
        settings = {name: os.environ.get(name) for name in ("DS9_BASE_URL", "DS9_DOWNLOAD_DELAY")}
        json.dump({"reached": reached, **settings}, report)
"""


def test_without_the_mirror_the_tests_and_notebooks_that_need_it_are_skipped_offline(tmp_path):
    """pytest in a fork that has no mirror: skipped with the reason, and never a request to the real site."""
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "network_guard.py").write_text(NETWORK_GUARD)
    (tmp_path / "no-mirror").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DS9_")}
    env.update(
        DS9_MIRROR=str(tmp_path / "no-mirror"),
        NETWORK_GUARD_REPORT=str(tmp_path / "guard.json"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "guard"), os.environ.get("PYTHONPATH")])),
    )
    selection = [
        "tests/test_download.py::test_mirror_downloads_every_page_byte_for_byte_then_only_what_is_missing",
        "notebooks/02_getting_the_data.ipynb",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "network_guard", "-rs", "-q", *selection],
        capture_output=True, text=True, timeout=300, env=env, cwd=PROJECT_ROOT,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and "skipped" in summary, result.stdout + result.stderr
    assert "passed" not in summary and "failed" not in summary and "error" not in summary, summary
    assert "the site's mirror is not at" in result.stdout and "the notebooks need its pages" in result.stdout

    guard = json.loads((tmp_path / "guard.json").read_text())
    assert guard["reached"] == []
    assert urlsplit(guard["DS9_BASE_URL"]).hostname == "127.0.0.1"  # never the real site
    assert guard["DS9_DOWNLOAD_DELAY"] is None  # the polite default stays
