"""The course model: the data it learns from, the recipe that trains it, and where it is kept.

Notebook 09 trains it with ``train_course_model()`` and saves it to ``course_checkpoint_path()``; every later
chapter calls ``load_course_model()``, which loads that checkpoint when it is there and otherwise trains a
small model itself (and keeps it), so any chapter also runs alone on Kaggle or Colab. The command line's
main job (``python -m ds9_utils``) goes through the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .corpus import load_split
from .model import GPT
from .settings import choose_device, data_dir, quick_mode
from .tokenizers import CharTokenizer
from .train import (
    PRESETS,
    Checkpoint,
    SingleProcess,
    TrainConfig,
    TrainResult,
    default_preset,
    load_checkpoint,
    set_seed,
    train,
)

COURSE_CHECKPOINT = "course_model.pt"
SMALL_CHECKPOINT = "small_model.pt"


@dataclass
class CourseData:
    """A character tokenizer and the token ids of each split, ready for ``train``."""

    tokenizer: CharTokenizer
    train: Tensor
    val: Tensor
    test: Tensor | None = None

    def __str__(self) -> str:
        sizes = ", ".join(
            f"{name} {len(ids):,}"
            for name, ids in (("train", self.train), ("val", self.val), ("test", self.test))
            if ids is not None
        )
        return f"{self.tokenizer.vocab_size} characters in the vocabulary; tokens: {sizes}"


def load_course_data(corpus_dir: Path | None = None) -> CourseData:
    """The DS9 corpus, split by episode, encoded with a character tokenizer built from the whole corpus.

    The vocabulary comes from every episode (the corpus is plain printable ASCII, so this only adds the
    odd character that happens to occur only in a validation episode); the model never sees their text.
    """
    tokenizer = CharTokenizer.from_text(load_split("all", corpus_dir))

    def ids(split: str) -> Tensor:
        return torch.tensor(tokenizer.encode(load_split(split, corpus_dir)), dtype=torch.long)

    return CourseData(tokenizer, ids("train"), ids("val"), ids("test"))


def text_data(text: str, val_fraction: float = 0.1) -> CourseData:
    """Any text as training data: the first 90% (by default) to train on, the rest to validate."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    cut = int(len(ids) * (1 - val_fraction))
    return CourseData(tokenizer, ids[:cut], ids[cut:])


def text_file_data(path: Path, val_fraction: float = 0.1) -> CourseData:
    """A UTF-8 text file as training data (see ``text_data``), with errors that say what is wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"--text {path}: no such file; pass a UTF-8 text file to train on")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--text {path} is not UTF-8 text ({error.reason} at byte {error.start}); convert it to UTF-8 first"
        ) from None
    if len(text) < 1000:
        raise ValueError(f"--text {path} holds only {len(text)} characters; give it at least a few thousand")
    return text_data(text, val_fraction)


def checkpoints_dir() -> Path:
    return data_dir() / "checkpoints"


def course_checkpoint_path() -> Path:
    """Where notebook 09 (and ``python -m ds9_utils``) keep the course model."""
    return checkpoints_dir() / COURSE_CHECKPOINT


def run_config(
    preset: str, max_steps: int | None = None, device: str = "cpu", max_seconds: float | None = None
) -> TrainConfig:
    """A preset's training recipe for one run, cut to ``max_steps`` or ``max_seconds``: the learning-rate
    schedule still spans the preset's steps, so a short run is the start of the full one and can be resumed."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    recipe = PRESETS[preset].train_config
    config = replace(
        recipe, device=device, max_seconds=max_seconds, lr_decay_steps=recipe.lr_decay_steps or recipe.max_steps
    )
    return config if max_steps is None else replace(config, max_steps=max_steps)


def train_course_model(
    data: CourseData | None = None,
    *,
    preset: str | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    device: str | None = None,
    progress: bool = True,
    live_plot: bool = False,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    parallel: SingleProcess | None = None,
) -> tuple[GPT, TrainResult]:
    """Train a GPT with a preset's recipe (default: the one that suits this machine) and checkpoint it.

    With ``resume`` (the default) an interrupted run continues from its checkpoint, and a finished one is
    loaded as it is. ``max_steps`` and ``max_seconds`` bound the run (see ``run_config``). ``parallel`` makes
    this call one rank of a data-parallel run (``ds9_utils.distributed``), on the device that rank was given.
    """
    parallel = parallel or SingleProcess()
    device = getattr(parallel, "device", None) or device or choose_device()
    preset = preset or default_preset(device)
    config = run_config(preset, max_steps, device, max_seconds)
    data = data or load_course_data()
    set_seed(config.seed)
    model = GPT(PRESETS[preset].gpt_config(data.tokenizer.vocab_size))  # the same weights on every rank
    set_seed(config.seed + parallel.rank)  # but each rank its own dropout masks, like its own rows of a batch
    result = train(
        model,
        data.train,
        data.val,
        config,
        tokenizer=data.tokenizer,
        checkpoint_path=checkpoint_path or course_checkpoint_path(),
        resume=resume,
        progress=progress,
        live_plot=live_plot,
        callback=callback,
        parallel=parallel,
    )
    return model.eval(), result


def load_course_model(device: str | None = None, *, progress: bool = True) -> Checkpoint:
    """Notebook 09's model when it has been trained; otherwise a small one, trained now and kept.

    The small one uses the ``quick`` preset in quick mode and the ``small`` preset (a few minutes on a
    CPU) otherwise; it is saved beside the course model, so the next chapter reuses it.
    """
    device = device or choose_device()
    path = course_checkpoint_path()
    if not path.exists():
        path = checkpoints_dir() / SMALL_CHECKPOINT
        if not path.exists():
            print(f"No course model at {course_checkpoint_path()} (notebook 09 trains it): training a small one now.")
            train_course_model(
                preset="quick" if quick_mode() else "small", checkpoint_path=path, device=device, progress=progress
            )
    return load_checkpoint(path, device)
