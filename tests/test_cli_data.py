"""The data commands, run as a user runs them: ``python -m ds9_utils download`` then ``corpus``, as subprocesses.

The site is the shared mirror served on 127.0.0.1 (skipped where there is none). Each command ends with one
line of JSON; a problem the user can fix is one line on stderr and a non-zero exit status, no traceback.
The downloader's own behaviour (retries, the cache, an unreachable site given by DS9_BASE_URL) is tested in
``test_download.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from servers import serve_folder

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "ds9_utils", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=PROJECT_ROOT,
    )


def last_json_line(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_line_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The single line a failed command prints on stderr (the progress bar aside): status 1 for a failure,
    2 for a usage error."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_download_then_corpus_then_a_rerun_that_downloads_nothing(mirror_url, tmp_path):
    data = str(tmp_path / "D")
    download = last_json_line(run_cli("download", "--base-url", mirror_url, "--data-dir", data, "--delay", "0"))
    assert {"downloaded", "cached", "failed"} <= set(download)
    assert (download["downloaded"], download["cached"], download["failed"]) == (165, 0, [])

    corpus = last_json_line(run_cli("corpus", "--data-dir", data))
    assert {"episodes", "characters", "vocab_size", "unclassified_lines"} <= set(corpus)
    assert corpus["episodes"] == 165
    text = (tmp_path / "D" / "corpus" / "corpus.txt").read_text(encoding="utf-8")
    assert corpus["characters"] == len(text) and corpus["vocab_size"] == len(set(text))
    assert 0 <= corpus["unclassified_lines"] <= 10
    split = json.loads((tmp_path / "D" / "corpus" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 165

    again = last_json_line(run_cli("download", "--base-url", mirror_url, "--data-dir", data, "--delay", "0"))
    assert (again["downloaded"], again["cached"], again["failed"]) == (0, 165, [])


def test_a_base_url_that_is_not_the_site(tmp_path):
    """A server that answers, but is not the site (the index is a 404): one line that names both settings.

    A site that cannot be reached at all is retried first; test_download.py checks that case end to end.
    """
    (tmp_path / "empty").mkdir()
    server = serve_folder(tmp_path / "empty")
    try:
        result = run_cli("download", "--base-url", server.url, "--data-dir", str(tmp_path / "D"), "--delay", "0")
    finally:
        server.close()
    error = one_line_error(result)
    assert "404" in error and "--base-url" in error and "DS9_BASE_URL" in error
    assert not (tmp_path / "D" / "chakoteya" / "DS9" / "episodes.htm").exists()


def test_an_index_that_links_no_transcripts(tmp_path):
    site = tmp_path / "site"
    (site / "DS9").mkdir(parents=True)
    (site / "DS9" / "episodes.htm").write_text("<html><body><h2>Season 1</h2><p>Nothing here yet.</p></body></html>")
    server = serve_folder(site)
    try:
        result = run_cli("download", "--base-url", server.url, "--data-dir", str(tmp_path / "D"), "--delay", "0")
    finally:
        server.close()
    error = one_line_error(result)
    assert "links no NNN.htm transcripts" in error and "--base-url" in error


def test_corpus_without_pages_says_to_download_first(tmp_path):
    error = one_line_error(run_cli("corpus", "--data-dir", str(tmp_path / "D")))
    assert "no transcript pages" in error and "python -m ds9_utils download" in error
    assert not (tmp_path / "D" / "corpus").exists()


def test_usage_errors_exit_2_with_one_line_and_failures_exit_1(tmp_path):
    unknown = one_line_error(run_cli("download", "--retries", "3"), status=2)
    assert "unrecognized arguments: --retries 3" in unknown and "--help" in unknown
    command = one_line_error(run_cli("fetch"), status=2)
    assert "invalid choice: 'fetch'" in command
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    for name in ("download", "corpus"):
        error = one_line_error(run_cli(name, "--data-dir", str(a_file)), status=2)
        assert "argument --data-dir" in error and "is a file, not a folder" in error
    failure = one_line_error(run_cli("corpus", "--data-dir", str(tmp_path / "empty")), status=1)
    assert "no transcript pages" in failure
