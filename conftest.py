"""Test set-up: quick mode, a private data folder, and the site's mirror served on 127.0.0.1.

It lives at the project's root so that it applies however pytest is started (``pytest``, ``pytest tests``,
``pytest notebooks/05_self_attention_from_scratch.ipynb``). It runs before any test or notebook, so the
notebooks that nbval executes inherit the same environment (Jupyter kernels start with a copy of ours):
they download from the loopback mirror into a temporary data folder, exactly as a user's run downloads
from the real site.

Where there is no mirror, nothing may reach the real site: the site's address is a closed loopback port
(a download that slips through fails within seconds), the polite delay stays, and the tests and notebooks that need
the transcripts are skipped with the reason.
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
HAVE_MIRROR = (MIRROR / "DS9" / "episodes.htm").exists()
MIRROR_MISSING = f"the site's mirror is not at {MIRROR} (set DS9_MIRROR to a copy of chakoteya.net's pages)"
NO_SITE = "http://127.0.0.1:9/"  # the discard port: nothing listens there

_mirror_server = None
_data_dir = None


def cpu_cores() -> int:
    """The cores this process may run on (a container's share, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


MAX_WORKERS = 4  # each worker downloads the transcripts and trains its own quick course model once


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """With pytest-xdist installed, a plain ``pytest`` runs on every core (at most ``MAX_WORKERS``), one file per
    worker at a time: a notebook's cells must all run in one kernel, and a module's fixtures are built once.

    Set here rather than in pyproject's addopts, so the suite still runs without xdist (as without nbval);
    ``-n 0`` or ``-p no:xdist`` runs everything in one process, and an explicit ``-n``/``--dist`` is kept.
    """
    if not config.pluginmanager.hasplugin("xdist") or config.option.numprocesses is not None:
        return
    if config.option.dist != "no" or config.option.tx:
        return
    if hasattr(config, "workerinput") or "PYTEST_XDIST_WORKER" in os.environ:
        return  # a worker (this hook runs its session), or a pytest that a test started inside one: no more workers
    workers = min(cpu_cores(), MAX_WORKERS)
    if workers > 1:
        config.option.numprocesses = workers
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False  # keep our order (pytest_collection_modifyitems): slow files first


def pytest_configure(config: pytest.Config) -> None:
    global _mirror_server, _data_dir
    if config.pluginmanager.hasplugin("nbval") and not (config.option.nbval or config.option.nbval_lax):
        config.option.nbval_lax = True  # a plain `pytest` runs the notebooks too (pyproject's addopts cannot:
        config.option.nbval_cell_timeout = 900  # without nbval installed, its flags there would be an error)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the cores are shared between the workers, so torch (here, in
        # the CLI subprocesses and in the notebooks' kernels, which inherit the variable) takes its share only
        threads = str(max(1, cpu_cores() // int(workerinput["workercount"])))
        os.environ.setdefault("OMP_NUM_THREADS", threads)
        if "torch" in sys.modules:  # imported already: the variable came too late for it
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.environ["DS9_QUICK"] = "1"
    os.environ["MPLBACKEND"] = "agg"
    _data_dir = tempfile.mkdtemp(prefix="ds9-test-data-")
    os.environ["DS9_DATA_DIR"] = _data_dir
    if HAVE_MIRROR:
        _mirror_server = serve_folder(MIRROR)
        os.environ["DS9_BASE_URL"] = _mirror_server.url
        os.environ["DS9_DOWNLOAD_DELAY"] = "0"  # our own server on 127.0.0.1: no one to be polite to
    else:
        os.environ["DS9_BASE_URL"] = NO_SITE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the notebooks go first; without the mirror, they are skipped (each starts by fetching the
    transcripts)."""
    if hasattr(config, "workerinput"):
        # The workers take files in this order (every worker collects the same order). The notebooks, each a
        # kernel that trains models for tens of seconds, go first, so the short test files fill in at the end
        # instead of one long notebook running alone; among themselves they keep their order, so chapter 09
        # trains the course model before the chapters that load it ask for it.
        items.sort(key=lambda item: not item.nodeid.startswith("notebooks/"))
    if HAVE_MIRROR:
        return
    notebooks = PROJECT_ROOT / "notebooks"
    for item in items:
        if notebooks in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=f"{MIRROR_MISSING}; the notebooks need its pages"))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _mirror_server is not None:
        _mirror_server.close()
    if _data_dir is not None:
        shutil.rmtree(_data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The shared copy of the site (skips the test where a fork has none)."""
    if not HAVE_MIRROR:
        pytest.skip(MIRROR_MISSING)
    return MIRROR


@pytest.fixture(scope="session")
def mirror_url(mirror_dir: Path) -> str:
    """The base URL of the loopback server that serves the mirror, as a replacement for chakoteya.net."""
    return _mirror_server.url
