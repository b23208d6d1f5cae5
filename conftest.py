"""Test set-up: quick mode, a private data folder, and the site's mirror served on 127.0.0.1.

It lives at the project's root so that it applies however pytest is started (``pytest``, ``pytest tests``,
``pytest notebooks/05_self_attention_from_scratch.ipynb``). It runs before any test or notebook, so the
notebooks that nbval executes inherit the same environment (Jupyter kernels start with a copy of ours):
they download from the loopback mirror into a temporary data folder, exactly as a user's run downloads
from the real site.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))  # the loopback servers the tests share

from servers import serve_folder  # noqa: E402

MIRROR = Path(os.environ.get("DS9_MIRROR", PROJECT_ROOT.parent / "shared" / "chakoteya")).resolve()
MIRROR_MISSING = f"the site's mirror is not at {MIRROR} (set DS9_MIRROR to a copy of chakoteya.net's pages)"

_mirror_server = None
_data_dir = None


def pytest_configure(config: pytest.Config) -> None:
    global _mirror_server, _data_dir
    os.environ["DS9_QUICK"] = "1"
    os.environ["DS9_DOWNLOAD_DELAY"] = "0"
    os.environ["MPLBACKEND"] = "agg"
    _data_dir = tempfile.mkdtemp(prefix="ds9-test-data-")
    os.environ["DS9_DATA_DIR"] = _data_dir
    if (MIRROR / "DS9" / "episodes.htm").exists():
        _mirror_server = serve_folder(MIRROR)
        os.environ["DS9_BASE_URL"] = _mirror_server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _mirror_server is not None:
        _mirror_server.close()
    if _data_dir is not None:
        shutil.rmtree(_data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The shared copy of the site (skips the test where a fork has none)."""
    if not (MIRROR / "DS9" / "episodes.htm").exists():
        pytest.skip(MIRROR_MISSING)
    return MIRROR


@pytest.fixture(scope="session")
def mirror_url(mirror_dir: Path) -> str:
    """The base URL of the loopback server that serves the mirror, as a replacement for chakoteya.net."""
    return _mirror_server.url
