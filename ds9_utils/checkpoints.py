"""Checkpoint files: everything needed to use a trained model, or to continue its training exactly.

A checkpoint holds the weights, the model's config, the optimizer's moments, the step, the history, the
tokenizer and every random-number state, so training N steps, stopping and resuming to 2N gives bit-for-bit
the weights of training 2N steps straight. It is written atomically and read weights-only
(``ds9_utils.files``), and every way a file can be wrong (missing, not a checkpoint, damaged, for another
model or another text) is one clear line that says what to do.

A checkpoint also holds a SHA-256 checksum of everything else in it (``content_digest``), checked on load:
one changed bit in the weights still unpickles into a model that runs and writes garbled text, so without
it a damaged file would load silently. Files written before the checksum existed load without the check.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from . import tokenizers
from .files import DamagedFileError, load_torch, save_torch
from .model import GPT, GPTConfig
from .settings import resolve_device
from .train_config import TrainConfig

CHECKPOINT_FORMAT = "ds9_utils-checkpoint"
CHECKPOINT_VERSION = 1
TRAIN_HINT = "train one first with `python -m ds9_utils train`"
CHECKSUM_KEY = "sha256"  # content_digest of every other entry, written by save_checkpoint
REQUIRED_KEYS = ("model", "model_config", "train_config", "tokenizer", "tokenizer_class", "step", "history")
KNOWN_KEYS = {*REQUIRED_KEYS, "format", "version", "optimizer", "best_val_loss", "rng", CHECKSUM_KEY}
KINDS = {"model": dict, "model_config": dict, "train_config": dict, "history": dict, "step": int}


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


def _feed(hasher: Any, value: Any) -> None:
    """Add ``value`` to ``hasher``: its type, its shape and its contents, so no two values feed the same bytes."""
    if torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)}:".encode())
        for key, item in value.items():  # in the order saved: the file keeps it
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__} {len(value)}:".encode())
        for item in value:
            _feed(hasher, item)
    else:  # str, int, float, bool, None: repr gives back the exact value
        hasher.update(f"{type(value).__name__} {value!r};".encode())


def content_digest(state: dict[str, Any]) -> str:
    """The SHA-256 of a checkpoint's contents (weights, optimizer, config, history...), all but the checksum.

    Computed over the loaded values, not the file's bytes, so it checks what a load would use; tensors
    count by dtype, shape and bytes, wherever they are.
    """
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in state.items() if key != CHECKSUM_KEY})
    return hasher.hexdigest()


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
    state[CHECKSUM_KEY] = content_digest(state)
    return save_torch(path, state)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw contents of a checkpoint file, checked to be one of ours, whole, with every part a model needs.

    Anything else is a ``DamagedFileError`` (one line, exit 2 on the command line).
    """
    raw = load_torch(path, map_location, what="checkpoint", remedy=f"{TRAIN_HINT}, or pass the path of another one")
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise DamagedFileError(f"{path} is a torch file but not a ds9_utils checkpoint: {TRAIN_HINT}")
    if CHECKSUM_KEY in raw and raw[CHECKSUM_KEY] != content_digest(raw):
        raise DamagedFileError(
            f"{path} is damaged: its contents no longer match the checksum saved in it (a disk or copy error); "
            f"use a good copy (from where this one came, or a backup), or {TRAIN_HINT}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    unknown = sorted(str(key) for key in raw if key not in KNOWN_KEYS)  # e.g. a changed bit in a part's name
    misshapen = [
        f"{key} is of type {type(raw[key]).__name__}"
        for key, kind in KINDS.items()
        if key in raw and not isinstance(raw[key], kind)
    ]
    if missing or unknown or misshapen:
        if missing:
            problem = f"it has no {', '.join(missing)}"
        else:
            problem = f"it has parts no checkpoint has: {unknown}" if unknown else f"its {', '.join(misshapen)}"
        raise DamagedFileError(f"{path} is a damaged checkpoint: {problem}; delete it and {TRAIN_HINT}")
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
        raise DamagedFileError(f"{path} describes no model this version can build ({error}); {TRAIN_HINT}") from error
    problem = _weights_problem(model, raw["model"])
    if problem is not None:
        raise DamagedFileError(f"{path} is a damaged checkpoint: {problem}; delete it and {TRAIN_HINT}")
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
    try:  # parts of the wrong kind: only in a file without a checksum (an older one, or one made by hand)
        saved = raw["train_config"]
        saved_config = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
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
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
        raise DamagedFileError(
            f"{path} is a damaged checkpoint ({type(error).__name__}: {error}); delete it and {TRAIN_HINT}"
        ) from error


def read_resumable_checkpoint(path: str | Path, model: GPT, tokenizer: Any = None) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be a run that ``model`` and ``tokenizer`` can continue exactly.

    Refused: a checkpoint of another model shape, of another tokenizer (another text: token 5 would mean
    another character, even with a vocabulary of the same size), or without the optimizer's state.
    """
    raw = read_checkpoint(path, map_location="cpu")
    start_afresh = "or write the new run to another file (--out, checkpoint_path)"
    saved_config = _saved_model_config(raw)
    other_text = tokenizer is not None and raw["tokenizer"] is not None and raw["tokenizer"] != tokenizer.to_dict()
    same_but_vocabulary = saved_config is not None and replace(saved_config, vocab_size=model.config.vocab_size)
    if other_text or same_but_vocabulary == model.config != saved_config:
        # Another text has another vocabulary (even of the same size: token 5 means another character),
        # so the model differs in its vocabulary only: the text is to blame, not the preset.
        raise ValueError(
            f"the checkpoint at {path} was trained on another text (its vocabulary, "
            f"{raw['model_config'].get('vocab_size')} tokens, is not this text's, {model.config.vocab_size} tokens): "
            f"continue it on the text it was trained on (--text), {start_afresh}"
        )
    if saved_config != model.config:
        raise ValueError(
            f"the checkpoint at {path} is for a different model ({raw['model_config']}): continue it with the "
            f"preset (model config) that trained it, {start_afresh}"
        )
    if raw.get("optimizer") is None or "rng" not in raw:
        raise ValueError(
            f"the checkpoint at {path} holds no optimizer state, so training cannot continue exactly; {start_afresh}"
        )
    problem = _weights_problem(model, raw["model"])
    if problem is not None:
        raise DamagedFileError(f"{path} is a damaged checkpoint: {problem}; {start_afresh}")
    return raw
