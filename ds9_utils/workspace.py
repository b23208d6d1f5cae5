"""Get a notebook (or the main job) ready to work: data downloaded, corpus built, device chosen.

Every notebook starts by calling ``setup_notebook()``, so a chapter opened on its own on Kaggle or Colab
fetches what it needs, and one opened in a clone of the course reuses the cache in ``data/``. What it did
(and how long that took) is part of the workspace it returns, so the set-up cell's output says it.

Paths meant for the reader go through ``display_path``: a notebook's output is saved with it and read on
GitHub, so it must say ``../data/`` rather than the absolute path of the machine that ran it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .download import DownloadConfig, DownloadError, download_transcripts
from .settings import FIGURE_DPI, PROJECT_ROOT, base_url, choose_device, data_dir, pages_dir, quick_mode
from .settings import corpus_dir as corpus_dir_of

CORPUS_FILES = ("corpus.txt", "train.txt", "val.txt", "test.txt", "split.json", "episodes.jsonl")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def display_path(path: Path) -> str:
    """``path`` as a reader should see it: relative to the current folder (``data/``), to the course's folder
    in a clone (``../data/`` from ``notebooks/``), to ``$DS9_DATA_DIR`` or to ``~``; never this machine's
    absolute path.

    Folders end with a slash. A path outside all of them (a checkpoint you saved elsewhere) is shown as it is.
    """
    path = Path(path).expanduser().resolve()
    suffix = "/" if path.is_dir() else ""
    here = Path.cwd().resolve()
    if _inside(path, here):
        return (path.relative_to(here).as_posix() + suffix) if path != here else "./"
    if (PROJECT_ROOT / "pyproject.toml").exists() and _inside(path, PROJECT_ROOT):
        if _inside(here, PROJECT_ROOT):
            return Path(os.path.relpath(path, here)).as_posix() + suffix
        return "the course's " + path.relative_to(PROJECT_ROOT).as_posix() + suffix
    configured = os.environ.get("DS9_DATA_DIR")
    if configured and _inside(path, Path(configured).expanduser().resolve()):
        inner = path.relative_to(Path(configured).expanduser().resolve()).as_posix()
        return "$DS9_DATA_DIR" + ("" if inner == "." else "/" + inner) + suffix
    if _inside(path, Path.home().resolve()):
        return "~/" + path.relative_to(Path.home().resolve()).as_posix() + suffix
    return str(path) + suffix


@dataclass
class Workspace:
    """Where things are, how this run is configured, and what preparing the data did."""

    data_dir: Path
    corpus_dir: Path
    device: str
    quick: bool
    seed: int
    prepared: str = ""  # e.g. "downloaded 165 transcript pages ... in 3.1 s; built the corpus ... in 4.2 s"

    def __str__(self) -> str:
        mode = "quick mode (small and fast, as in the tests)" if self.quick else "full mode"
        return (
            f"data folder: {display_path(self.data_dir)}\ncorpus:      {self.prepared}\n"
            f"device:      {self.device}\nmode:        {mode}"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def corpus_is_built(corpus_dir: Path) -> bool:
    return all((corpus_dir / name).exists() for name in CORPUS_FILES)


def _prepare_corpus(data: Path, progress: bool) -> tuple[Path, str]:
    """Download what is missing and build the corpus when it is not built; return its folder and one line
    that says what was done and how long it took."""
    from .corpus import build_corpus

    corpus_dir = corpus_dir_of(data)
    if corpus_is_built(corpus_dir):
        return corpus_dir, f"found in {display_path(corpus_dir)} (cached)"
    site = base_url()
    report = download_transcripts(site, data, DownloadConfig(), progress=progress)
    if not (report.downloaded or report.cached):
        raise DownloadError(f"no transcript could be downloaded ({report.failed[:3]}); see the errors above")
    if report.downloaded:
        pages, host = len(report.downloaded), urlsplit(site).netloc
        done = f"downloaded {pages} transcript pages from {host} in {report.seconds:.1f} s"
        done += f" ({len(report.cached)} were cached)" if report.cached else ""
    else:
        done = f"found the {len(report.cached)} transcript pages in {display_path(pages_dir(data))} (cached)"
    if report.failed:
        done += f"; {len(report.failed)} could not be fetched (a later run tries them again)"
    started = time.monotonic()
    summary = build_corpus(pages_dir(data), corpus_dir)
    done += f"; built the corpus ({summary.characters:,} characters) in {time.monotonic() - started:.1f} s"
    return corpus_dir, done


def ensure_corpus(data: Path | None = None, *, progress: bool = True) -> Path:
    """Download any missing transcript pages and build the corpus if it is not built yet; return its folder."""
    return _prepare_corpus(Path(data or data_dir()), progress)[0]


def setup_notebook(seed: int = 1337, *, progress: bool = True) -> Workspace:
    """Prepare the data and return the workspace a notebook works in (seeded for reproducibility).

    Printing the workspace says where the data is, what was downloaded and built (and in how long), the
    device and the mode.
    """
    import matplotlib.pyplot as plt  # activates the notebook's plotting backend first, so the setting below stays
    import torch

    plt.rcParams["figure.dpi"] = FIGURE_DPI
    torch.manual_seed(seed)
    data = data_dir()
    corpus_dir, prepared = _prepare_corpus(data, progress)
    return Workspace(data, corpus_dir, choose_device(), quick_mode(), seed, prepared)
