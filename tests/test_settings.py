"""The settings a user gives through the environment or the command line: bad input is refused, never guessed.

The pause between requests is what keeps the downloader polite, so no typo may switch it off; quick mode
takes only clear yes/no answers (``DS9_QUICK=off`` used to mean on).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from servers import make_fault_server

from ds9_utils.download import DownloadConfig
from ds9_utils.precision import should_compile
from ds9_utils.settings import DEFAULT_BASE_URL, NO_WORDS, YES_WORDS, base_url, download_delay, quick_mode

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("delay", [-5, -0.001, math.nan, math.inf, -math.inf])
def test_a_delay_that_would_switch_politeness_off_is_refused(delay):
    with pytest.raises(ValueError) as raised:
        DownloadConfig(delay=delay)
    message = str(raised.value)
    assert repr(float(delay)) in message or repr(delay) in message
    assert ">= 0" in message and "such as 1" in message and "\n" not in message


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "1e400"])
def test_a_bad_ds9_download_delay_is_refused_and_named(monkeypatch, value):
    monkeypatch.setenv("DS9_DOWNLOAD_DELAY", value)
    with pytest.raises(ValueError, match="DS9_DOWNLOAD_DELAY .*use a number >= 0"):
        DownloadConfig()


@pytest.mark.parametrize("value", ["abc", "1s", "one", "0x10"])
def test_a_ds9_download_delay_that_is_not_a_number_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("DS9_DOWNLOAD_DELAY", value)
    with pytest.raises(ValueError, match=rf"DS9_DOWNLOAD_DELAY='{value}' is not a number"):
        download_delay()


@pytest.mark.parametrize(("value", "seconds"), [(None, 1.0), ("", 1.0), ("0", 0.0), (" 2.5 ", 2.5)])
def test_good_delays(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv("DS9_DOWNLOAD_DELAY", raising=False)
    else:
        monkeypatch.setenv("DS9_DOWNLOAD_DELAY", value)
    assert download_delay() == seconds and DownloadConfig().delay == seconds
    assert DownloadConfig(delay=0).delay == 0.0 and DownloadConfig(delay=3).delay == 3.0


@pytest.mark.parametrize("field", ["connect_timeout", "read_timeout", "page_deadline"])
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf])
def test_timeouts_must_be_positive_and_finite(field, value):
    with pytest.raises(ValueError, match=field):
        DownloadConfig(delay=0, **{field: value})


@pytest.mark.parametrize("values", [{"retries": -1}, {"give_up_after": 0}, {"backoff": -1}, {"backoff": math.nan}])
def test_retries_and_backoff_must_make_sense(values):
    with pytest.raises(ValueError, match="retries"):
        DownloadConfig(delay=0, **values)


@pytest.mark.parametrize("value", ["1", "true", "YES", "On", " on "])
def test_quick_mode_on(monkeypatch, value):
    monkeypatch.setenv("DS9_QUICK", value)
    assert quick_mode() is True


@pytest.mark.parametrize("value", ["", "0", "false", "No", "OFF", "off"])
def test_quick_mode_off(monkeypatch, value):
    monkeypatch.setenv("DS9_QUICK", value)
    assert quick_mode() is False


def test_quick_mode_off_when_unset(monkeypatch):
    monkeypatch.delenv("DS9_QUICK", raising=False)
    assert quick_mode() is False


@pytest.mark.parametrize("value", ["maybe", "2", "y", "n", "none", "enabled", "quick"])
def test_quick_mode_refuses_what_is_not_a_clear_yes_or_no(monkeypatch, value):
    monkeypatch.setenv("DS9_QUICK", value)
    with pytest.raises(ValueError) as raised:
        quick_mode()
    message = str(raised.value)
    assert f"DS9_QUICK='{value}'" in message and "1, true, yes, on" in message and "0, false, no, off" in message


@pytest.mark.parametrize("value", [*YES_WORDS, *NO_WORDS, " On ", "FALSE", "", "banana", "maybe", "n"])
def test_ds9_quick_and_ds9_compile_understand_the_same_words_and_refuse_the_same_others(monkeypatch, value):
    """One function reads every DS9_* switch: DS9_COMPILE=banana used to mean on while DS9_QUICK=maybe was refused."""
    model = torch.nn.Linear(2, 2)
    monkeypatch.setenv("DS9_QUICK", value)
    monkeypatch.setenv("DS9_COMPILE", value)
    word = value.strip().lower()
    if word in YES_WORDS + NO_WORDS:
        assert quick_mode() is should_compile("cpu", model, requested=False) is (word in YES_WORDS)
    elif not word:
        assert quick_mode() is False and should_compile("cpu", model, requested=True) is True  # unset: the default
    else:
        for name, read in (("DS9_QUICK", quick_mode), ("DS9_COMPILE", lambda: should_compile("cpu", model))):
            with pytest.raises(ValueError) as raised:
                read()
            message = str(raised.value)
            assert message.startswith(f"{name}={value!r} is not a yes or no") and "\n" not in message
            assert "1, true, yes, on" in message and "0, false, no, off" in message


def test_base_url_from_the_argument_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv("DS9_BASE_URL", raising=False)
    assert base_url() == DEFAULT_BASE_URL
    monkeypatch.setenv("DS9_BASE_URL", "http://127.0.0.1:8000/mirror")
    assert base_url() == "http://127.0.0.1:8000/mirror/"
    assert base_url("https://example.org") == "https://example.org/"


@pytest.mark.parametrize("url", ["www.chakoteya.net", "ftp://www.chakoteya.net/", "file:///tmp/site", "http://"])
def test_base_url_that_is_not_a_web_address_is_refused(monkeypatch, url):
    monkeypatch.setenv("DS9_BASE_URL", url)
    for given in (None, url):
        with pytest.raises(ValueError, match=r"\(--base-url or DS9_BASE_URL\) is not an http\(s\) address"):
            base_url(given)


def run_download(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ds9_utils", "download", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=PROJECT_ROOT,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--delay", "-5"], {}, "-5"),
        (["--delay", "nan"], {}, "nan"),
        ([], {"DS9_DOWNLOAD_DELAY": "-1"}, "DS9_DOWNLOAD_DELAY is -1.0 seconds"),
        ([], {"DS9_DOWNLOAD_DELAY": "abc"}, "DS9_DOWNLOAD_DELAY='abc' is not a number"),
        ([], {"DS9_BASE_URL": "www.chakoteya.net"}, "not an http(s) address"),
    ],
)
def test_cli_refuses_bad_settings_in_one_line_before_any_request(tmp_path, args, env, expected):
    server, log = make_fault_server()
    try:
        url = [] if "DS9_BASE_URL" in env else ["--base-url", server.url]
        result = run_download(*url, "--data-dir", str(tmp_path), *args, env=env)
    finally:
        server.close()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert sum(log.attempts.values()) == 0 and list(tmp_path.iterdir()) == []
