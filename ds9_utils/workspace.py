"""Get a notebook (or the main job) ready to work: data downloaded, corpus built, device chosen.

Every notebook starts by calling ``setup_notebook()``, so a chapter opened on its own on Kaggle or Colab
fetches what it needs, and one opened in a clone of the course reuses the cache in ``data/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .download import DownloadConfig, DownloadError, download_transcripts, pages_dir
from .settings import base_url, choose_device, data_dir, quick_mode

CORPUS_FILES = ("corpus.txt", "train.txt", "val.txt", "test.txt", "split.json", "episodes.jsonl")


@dataclass
class Workspace:
    """Where things are and how this run is configured."""

    data_dir: Path
    corpus_dir: Path
    device: str
    quick: bool
    seed: int

    def __str__(self) -> str:
        mode = "quick mode (small and fast, as in the tests)" if self.quick else "full mode"
        return (
            f"data folder: {self.data_dir}\ncorpus:      {self.corpus_dir}\n"
            f"device:      {self.device}\nmode:        {mode}"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def corpus_is_built(corpus_dir: Path) -> bool:
    return all((corpus_dir / name).exists() for name in CORPUS_FILES)


def ensure_corpus(data: Path | None = None, *, progress: bool = True) -> Path:
    """Download any missing transcript pages and build the corpus if it is not built yet; return its folder."""
    from .corpus import build_corpus

    data = Path(data or data_dir())
    corpus_dir = data / "corpus"
    if corpus_is_built(corpus_dir):
        return corpus_dir
    report = download_transcripts(base_url(), data, DownloadConfig(), progress=progress)
    if not (report.downloaded or report.cached):
        raise DownloadError(f"no transcript could be downloaded ({report.failed[:3]}); see the errors above")
    build_corpus(pages_dir(data), corpus_dir)
    return corpus_dir


def setup_notebook(seed: int = 1337, *, progress: bool = True) -> Workspace:
    """Prepare the data and return the workspace a notebook works in (seeded for reproducibility)."""
    import torch

    torch.manual_seed(seed)
    corpus_dir = ensure_corpus(progress=progress)
    return Workspace(data_dir(), corpus_dir, choose_device(), quick_mode(), seed)
