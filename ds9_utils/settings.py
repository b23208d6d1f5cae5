"""The one place that decides where data lives, which device we train on, whether we run in quick mode, and
whether we run in a notebook.

Everything else in ds9_utils (and every notebook) asks these functions instead of reading the environment
itself, so a user can move the data with ``DS9_DATA_DIR`` or shrink every experiment with ``DS9_QUICK=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_BASE_URL = "http://www.chakoteya.net/"
#: The course's home: named in the downloader's User-Agent, so that the site's owner can see who asks.
COURSE_URL = "https://github.com/louiscollinsjr/ds9-llm-from-zero"
#: The resolution of every figure a notebook shows and saves: sharp at GitHub's page width (100 is blurry).
FIGURE_DPI = 150
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where downloads, the corpus and checkpoints are cached: ``$DS9_DATA_DIR`` or the project's ``data/``.

    When the package is installed somewhere without a project checkout (Kaggle, Colab), ``./data`` next
    to the notebook is used instead.
    """
    configured = os.environ.get("DS9_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "data"
    return Path.cwd() / "data"


def base_url(url: str | None = None) -> str:
    """The site to download from: ``url`` (``--base-url``), else ``$DS9_BASE_URL``, else chakoteya.net.

    Always ends with a slash. Anything but an ``http(s)://host/...`` address is refused with one line.
    """
    from urllib.parse import urlsplit

    url = url or os.environ.get("DS9_BASE_URL") or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"the site address {url!r} (--base-url or DS9_BASE_URL) is not an http(s) address; "
            f"use the site's root, such as {DEFAULT_BASE_URL}"
        )
    return url if url.endswith("/") else url + "/"


def download_delay(seconds: float | None = None) -> float:
    """Seconds to wait between two requests to the site: ``seconds`` (``--delay``), else
    ``$DS9_DOWNLOAD_DELAY``, else one second (the tests use 0 against their loopback mirror).

    The pause is what keeps the downloader polite, so only a finite number >= 0 is accepted: a typo must
    not switch it off (a negative or NaN pause would mean no pause at all).
    """
    source = "the download delay"
    if seconds is None:
        source = "DS9_DOWNLOAD_DELAY"
        raw = os.environ.get("DS9_DOWNLOAD_DELAY", "").strip() or "1"
        try:
            seconds = float(raw)
        except ValueError:
            raise ValueError(
                f"DS9_DOWNLOAD_DELAY={raw!r} is not a number; set it to the seconds between requests, such as 1"
            ) from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(
            f"{source} is {seconds!r} seconds; use a number >= 0, such as 1 (the default): "
            "a pause between requests keeps the download polite to the site"
        )
    return float(seconds)


# The words a DS9_* switch understands, in any case and with spaces around; unset or empty means the default.
YES_WORDS = ("1", "true", "yes", "on")
NO_WORDS = ("0", "false", "no", "off")


def env_switch(name: str, *, on: str, off: str) -> bool | None:
    """The yes or no of the environment variable ``name`` (a ``DS9_*`` switch), or ``None`` when it is unset.

    Every switch reads the same words (``YES_WORDS``, ``NO_WORDS``); anything else is refused in one line
    that says what ``on`` and ``off`` mean, rather than guessed: ``DS9_QUICK=off`` or ``DS9_COMPILE=banana``
    must never silently mean on.
    """
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return None
    if value in YES_WORDS + NO_WORDS:
        return value in YES_WORDS
    raise ValueError(
        f"{name}={raw!r} is not a yes or no; use one of {', '.join(YES_WORDS)} for {on}, "
        f"or one of {', '.join(NO_WORDS)} for {off} (or leave it unset)"
    )


def quick_mode() -> bool:
    """True when ``DS9_QUICK`` says yes (``env_switch``): tests and CI run every notebook small and fast."""
    return bool(env_switch("DS9_QUICK", on="quick mode", off="the full runs"))


def in_notebook() -> bool:
    """True in a Jupyter kernel (JupyterLab, Colab, Kaggle, nbconvert, nbval), where an output can be replaced in
    place; False in a script, a terminal or terminal IPython."""
    if "IPython" not in sys.modules:  # never imported: certainly no kernel, and importing it would cost time
        return False
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def choose_device() -> str:
    """The best available device: cuda, then Apple's mps, then the cpu. ``DS9_DEVICE`` overrides it (checked)."""
    import torch

    forced = os.environ.get("DS9_DEVICE", "").strip()
    if forced:
        return resolve_device(forced, source="DS9_DEVICE")
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def resolve_device(requested: str | None = None, *, source: str = "device") -> str:
    """``requested`` checked against this machine (``None``: ``choose_device()``), as torch spells it.

    A device torch does not know, or one this machine lacks (``cuda`` without a GPU, ``cuda:3`` with one
    GPU), is one clear line naming ``source`` (the setting it came from) instead of an error deep inside
    torch, which for a checkpoint would read as if the file were broken.
    """
    import torch

    if requested is None or not str(requested).strip():
        return choose_device()
    requested = str(requested).strip()
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        device = None
    if device is not None and device.type == "cpu":
        return "cpu"
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        if device.index is None or device.index < torch.cuda.device_count():
            return str(device)
    if device is not None and device.type == "mps" and _mps_available() and not device.index:
        return "mps"
    have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if _mps_available() else [])
    raise ValueError(
        f"{source}={requested} is not a device this machine has: use cpu (or cuda / mps where available); "
        f"this machine has {', '.join(have)}"
    )


# The data folder's layout, decided here once: every module and command builds its paths with these.


def pages_dir(data: Path | None = None) -> Path:
    """The downloaded pages, in the site's own layout: ``<data>/chakoteya/DS9``."""
    return Path(data or data_dir()) / "chakoteya" / "DS9"


def corpus_dir(data: Path | None = None) -> Path:
    """The corpus built from the pages (text, splits, episodes): ``<data>/corpus``."""
    return Path(data or data_dir()) / "corpus"


def checkpoints_dir(data: Path | None = None) -> Path:
    """Trained models: ``<data>/checkpoints``."""
    return Path(data or data_dir()) / "checkpoints"
