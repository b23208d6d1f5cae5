"""The downloader against real HTTP servers on 127.0.0.1: the shared mirror, and a server that misbehaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import FAULT_SCRIPT, make_fault_server, page_html, serve_folder

from ds9_utils import download
from ds9_utils.download import DownloadConfig, DownloadError, download_transcripts, pages_dir

FAST = DownloadConfig(delay=0.0, connect_timeout=2.0, read_timeout=0.5, retries=2, backoff=0.05)


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


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
    assert user_agents and all(agent.startswith("ds9-lets-build-an-llm/") for agent in user_agents)


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
