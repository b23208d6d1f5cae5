"""The one place that decides where data lives, which device we train on, and whether we run in quick mode.

Everything else in ds9_utils (and every notebook) asks these functions instead of reading the environment
itself, so a user can move the data with ``DS9_DATA_DIR`` or shrink every experiment with ``DS9_QUICK=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BASE_URL = "http://www.chakoteya.net/"
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


def base_url() -> str:
    """The site to download from: ``$DS9_BASE_URL`` or chakoteya.net. Always ends with a slash."""
    url = os.environ.get("DS9_BASE_URL") or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def download_delay() -> float:
    """Seconds to wait between two requests to the site: ``$DS9_DOWNLOAD_DELAY`` or one second (tests use 0)."""
    return float(os.environ.get("DS9_DOWNLOAD_DELAY", "1.0"))


def quick_mode() -> bool:
    """True when ``DS9_QUICK`` is set to something truthy: tests and CI run every notebook small and fast."""
    return os.environ.get("DS9_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def choose_device() -> str:
    """The best available device: cuda, then Apple's mps, then the cpu. ``DS9_DEVICE`` overrides it."""
    import torch

    forced = os.environ.get("DS9_DEVICE")
    if forced:
        return forced
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
