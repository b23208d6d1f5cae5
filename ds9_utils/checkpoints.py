"""Checkpoint files: everything needed to use a trained model, or to continue its training exactly.

A checkpoint holds the weights, the model's config, the optimizer's moments, the step, the history, the
tokenizer and every random-number state, so training N steps, stopping and resuming to 2N gives bit-for-bit
the weights of training 2N steps straight. It is written atomically and read weights-only
(``ds9_utils.files``), and every way a file can be wrong (missing, not a checkpoint, damaged, for another
model or another text) is one clear line that says what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import tokenizers
from .files import load_torch, save_torch
from .model import GPT, GPTConfig
from .settings import resolve_device
from .train_config import TrainConfig

CHECKPOINT_FORMAT = "ds9_utils-checkpoint"
CHECKPOINT_VERSION = 1
TRAIN_HINT = "train one first with `python -m ds9_utils train`"
REQUIRED_KEYS = ("model", "model_config", "train_config", "tokenizer", "tokenizer_class", "step", "history")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (in eval mode) and what trained it."""

    model: GPT
    tokenizer: Any  # a tokenizer rebuilt with from_dict, or None when none was saved
    step: int
    history: dict[str, list]
    best_val_loss: float
    model_config: GPTConfig
    train_config: TrainConfig
    raw: dict[str, Any]  # everything in the file, e.g. raw["optimizer"] to continue training


def rng_states(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random-number state a resumed run needs to draw what the uninterrupted run would have drawn."""
    return {
        "torch": torch.get_rng_state(),
        "batches": generator.get_state() if generator is not None else None,
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if states["batches"] is not None:
        generator.set_state(states["batches"].cpu())
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def save_checkpoint(
    path: str | Path,
    *,
    model: GPT,
    optimizer: torch.optim.Optimizer | None,
    train_config: TrainConfig,
    step: int,
    history: dict[str, list],
    best_val_loss: float = float("inf"),
    tokenizer: Any = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Write a checkpoint atomically: to a temporary file in the same folder, then renamed over ``path``.

    A crash or Ctrl-C in the middle leaves the previous checkpoint untouched. Only tensors and plain
    Python values are stored, so the file loads with ``torch.load(..., weights_only=True)``.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "model_config": asdict(model.config),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train_config": asdict(train_config),
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "tokenizer_class": type(tokenizer).__name__ if tokenizer is not None else None,
        "step": step,
        "history": history,
        "best_val_loss": best_val_loss,
        "rng": rng_states(generator),
    }
    return save_torch(path, state)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw contents of a checkpoint file, checked to be one of ours with every part a model needs."""
    raw = load_torch(path, map_location, what="checkpoint", remedy=f"{TRAIN_HINT}, or pass the path of another one")
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a torch file but not a ds9_utils checkpoint: {TRAIN_HINT}")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ValueError(f"{path} is a damaged checkpoint: it has no {', '.join(missing)}; delete it and {TRAIN_HINT}")
    return raw


def _weights_problem(model: torch.nn.Module, weights: Any) -> str | None:
    """What keeps ``weights`` from loading into ``model`` (missing, unexpected or misshapen tensors), if anything."""
    if not isinstance(weights, dict):
        return "its weights are not a table of tensors"
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    misshapen = [
        f"{name} is {tuple(weights[name].shape)}, not {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in weights and (not torch.is_tensor(weights[name]) or weights[name].shape != tensor.shape)
    ]
    for label, names in (("no weights for", missing), ("weights for no layer", unexpected), ("", misshapen)):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            return f"{label} {names[0]}{more}".strip()
    return None


def _model_from(path: str | Path, raw: dict[str, Any]) -> GPT:
    """The model the checkpoint describes, with its weights, or one line on why the file does not fit."""
    try:
        model = GPT(GPTConfig(**raw["model_config"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} describes no model this version can build ({error}); {TRAIN_HINT}") from error
    problem = _weights_problem(model, raw["model"])
    if problem is not None:
        raise ValueError(f"{path} is a damaged checkpoint: {problem}; delete it and {TRAIN_HINT}")
    model.load_state_dict(raw["model"])
    return model


def _saved_model_config(raw: dict[str, Any]) -> GPTConfig | None:
    """The checkpoint's model config, with the defaults for options added since it was written; None if invalid."""
    try:
        return GPTConfig(**raw["model_config"])
    except (TypeError, ValueError):
        return None


def tokenizer_from_dict(class_name: str | None, data: dict | None) -> Any:
    if data is None:
        return None
    tokenizer_class = getattr(tokenizers, class_name or "CharTokenizer", None)
    if tokenizer_class is None:
        raise ValueError(f"the checkpoint's tokenizer class {class_name!r} is not in ds9_utils.tokenizers")
    return tokenizer_class.from_dict(data)


def load_checkpoint(path: str | Path, device: str | None = None) -> Checkpoint:
    """Load a checkpoint written by ``train``: the model rebuilt from its config, on ``device``, in eval mode.

    The device is checked first (``settings.resolve_device``), so a device this machine lacks is reported as
    such, not as a broken file.
    """
    device = resolve_device(device)
    raw = read_checkpoint(path, map_location=device)
    model = _model_from(path, raw).to(device).eval()
    saved_config = {f.name: raw["train_config"][f.name] for f in fields(TrainConfig) if f.name in raw["train_config"]}
    return Checkpoint(
        model=model,
        tokenizer=tokenizer_from_dict(raw["tokenizer_class"], raw["tokenizer"]),
        step=raw["step"],
        history=raw["history"],
        best_val_loss=raw.get("best_val_loss", float("inf")),
        model_config=model.config,
        train_config=TrainConfig(**saved_config),
        raw=raw,
    )


def read_resumable_checkpoint(path: str | Path, model: GPT, tokenizer: Any = None) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be a run that ``model`` and ``tokenizer`` can continue exactly.

    Refused: a checkpoint of another model shape, of another tokenizer (another text: token 5 would mean
    another character, even with a vocabulary of the same size), or without the optimizer's state.
    """
    raw = read_checkpoint(path, map_location="cpu")
    start_afresh = "or write the new run to another file (--out, checkpoint_path)"
    if _saved_model_config(raw) != model.config:
        raise ValueError(
            f"the checkpoint at {path} is for a different model ({raw['model_config']}): continue it with the "
            f"preset (model config) that trained it, {start_afresh}"
        )
    if tokenizer is not None and raw["tokenizer"] is not None and raw["tokenizer"] != tokenizer.to_dict():
        raise ValueError(
            f"the checkpoint at {path} was trained on another text (its tokenizer differs from this text's): "
            f"continue it on the text it was trained on (--text), {start_afresh}"
        )
    if raw.get("optimizer") is None or "rng" not in raw:
        raise ValueError(
            f"the checkpoint at {path} holds no optimizer state, so training cannot continue exactly; {start_afresh}"
        )
    problem = _weights_problem(model, raw["model"])
    if problem is not None:
        raise ValueError(f"{path} is a damaged checkpoint: {problem}; {start_afresh}")
    return raw
