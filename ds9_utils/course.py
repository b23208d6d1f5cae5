"""The course model: the data it learns from, the recipe that trains it, and where it is kept.

Notebook 09 trains it with ``train_course_model()`` and saves it to ``course_checkpoint_path()``; every later
chapter calls ``load_course_model()``, which loads that checkpoint when it is there and otherwise trains a
small model itself (and keeps it), so any chapter also runs alone on Kaggle or Colab. The command line's
main job (``python -m ds9_utils``) goes through the same functions.

Each preset keeps its own file (``course_model.pt`` for the course model, ``course_model-cpu.pt`` for the main
job's, ``course_model-quick.pt`` for the quick one...), so a quick run never stands in the way of a full one:
resuming only ever continues a run of the same model.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .checkpoints import Checkpoint, load_checkpoint
from .corpus import load_split
from .model import GPT
from .presets import COURSE_PRESET, course_preset, default_preset, fallback_preset, get_preset
from .settings import checkpoints_dir, resolve_device
from .tokenizers import CharTokenizer
from .train import SingleProcess, TrainResult, set_seed, train
from .train_config import TrainConfig

COURSE_CHECKPOINT = "course_model.pt"


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
    if path.is_dir():
        raise ValueError(f"--text {path} is a folder; pass a UTF-8 text file to train on, e.g. {path / 'text.txt'}")
    if path.exists() and not path.is_file():
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(path.stat().st_mode) else "a device or socket"
        raise ValueError(f"--text {path} is {kind}, not a file; save the text to a file and pass that")
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


def course_checkpoint_path(preset: str | None = None, data: Path | None = None) -> Path:
    """Where a preset's course model is kept (default: notebook 09's, ``course_preset()``) in the data folder."""
    preset = preset or course_preset()
    name = COURSE_CHECKPOINT if preset == COURSE_PRESET else f"course_model-{get_preset(preset).name}.pt"
    return checkpoints_dir(data) / name


def find_course_checkpoint(data: Path | None = None, device: str | None = None) -> Path | None:
    """The course model this machine would use, when one has been trained: notebook 09's, else the main job's."""
    for preset in dict.fromkeys([course_preset(), default_preset(device)]):
        if course_checkpoint_path(preset, data).is_file():
            return course_checkpoint_path(preset, data)
    return None


def run_config(
    preset: str,
    max_steps: int | None = None,
    device: str | None = None,
    max_seconds: float | None = None,
    *,
    step_budget: int | None = None,
) -> TrainConfig:
    """A preset's training recipe for one run, cut to ``max_steps`` or ``max_seconds``: the learning-rate
    schedule still spans the preset's steps, so a short run is the start of the full one and can be resumed.

    ``step_budget`` is a budget of its own instead: that many steps, with the whole schedule (warm-up, stable
    stretch, decay) laid over them and no time budget, as the budget curve (``ds9_utils.budget_curve``) needs.
    """
    recipe = get_preset(preset).train_config
    device = resolve_device(device)
    if step_budget is not None:
        recipe = replace(recipe, max_steps=step_budget, max_seconds=None, lr_decay_steps=None)
    config = replace(
        recipe,
        device=device,
        max_seconds=recipe.max_seconds if max_seconds is None else max_seconds,  # a time budget is the schedule
        lr_decay_steps=recipe.lr_decay_steps or recipe.max_steps,
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
    step_budget: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    progress: bool = True,
    live_plot: bool = False,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    parallel: SingleProcess | None = None,
) -> tuple[GPT, TrainResult]:
    """Train a GPT with a preset's recipe (default: the one that suits this machine) and checkpoint it.

    With ``resume`` (the default) an interrupted run continues from its checkpoint, and a finished one is
    loaded as it is. ``max_steps``, ``max_seconds`` and ``step_budget`` bound the run (see ``run_config``);
    ``seed`` (default: the preset's) sets the initial weights and the batches, so runs that differ only by it show
    the spread.
    ``parallel`` makes this call one rank of a data-parallel run (``ds9_utils.distributed``), on the device that
    rank was given.
    """
    parallel = parallel or SingleProcess()
    device = resolve_device(getattr(parallel, "device", None) or device)
    preset = preset or default_preset(device, max_seconds)
    config = run_config(preset, max_steps, device, max_seconds, step_budget=step_budget)
    if seed is not None:
        config = replace(config, seed=seed)
    data = data or load_course_data()
    set_seed(config.seed)
    model = GPT(get_preset(preset).gpt_config(data.tokenizer.vocab_size))  # the same weights on every rank
    set_seed(config.seed + parallel.rank)  # but each rank its own dropout masks, like its own rows of a batch
    result = train(
        model,
        data.train,
        data.val,
        config,
        tokenizer=data.tokenizer,
        checkpoint_path=checkpoint_path or course_checkpoint_path(preset),
        resume=resume,
        progress=progress,
        live_plot=live_plot,
        callback=callback,
        parallel=parallel,
    )
    return model.eval(), result


def load_course_model(device: str | None = None, *, progress: bool = True) -> Checkpoint:
    """Notebook 09's model when it has been trained; otherwise a small one, trained now and kept.

    The small one uses ``presets.fallback_preset()`` (the ``quick`` preset in quick mode, the ``small`` one,
    a few minutes on a CPU, otherwise); it is saved beside the course model, so the next chapter reuses it.
    """
    device = resolve_device(device)
    path = find_course_checkpoint(device=device)
    if path is None:
        preset = fallback_preset()
        path = course_checkpoint_path(preset)
        if not path.is_file():
            from .workspace import display_path

            where = display_path(checkpoints_dir())
            print(f"No course model in {where} (notebook 09 trains it): training a small one now.")
            _, result = train_course_model(preset=preset, checkpoint_path=path, device=device, progress=progress)
            print(
                f"Trained the {preset!r} preset for {result.steps:,} steps in {result.seconds:.0f} s "
                f"(validation loss {result.val_loss:.3f}); kept as {display_path(path)}"
            )
    return load_checkpoint(path, device)
