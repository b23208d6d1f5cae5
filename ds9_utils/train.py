"""Training: random batches, the learning-rate schedule, one step, the loop and evaluation.

The loop is nanoGPT's: sample a batch of random windows, take one step (``TrainingStep``: forward, backward,
clip the gradient, update the weights with the optimizer of ``ds9_utils.optim``), and every
``eval_interval`` steps measure the loss on held-out text. Losses are reported in nats (what
cross-entropy computes) and in bits per character (``nats / ln 2``, the number used to compare compressors
and language models; for a character tokenizer a token *is* a character).

A checkpoint (``ds9_utils.checkpoints``) holds everything needed to continue a run exactly where it
stopped, so training N steps, stopping and resuming to 2N gives bit-for-bit the weights of training 2N
steps straight. A recipe is a ``TrainConfig`` (``ds9_utils.train_config``); the presets that name a model and
its recipe live in ``ds9_utils.presets``.

The same loop also runs as one of several processes that train together (data parallelism): it asks a
``SingleProcess`` object, which does nothing here, and ``ds9_utils.distributed.DataParallel`` replaces it
under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import precision
from .checkpoints import read_resumable_checkpoint, restore_rng_states, save_checkpoint
from .evaluate import bits_per_char
from .model import GPT, check_token_ids
from .optim import configure_optimizer, set_learning_rates
from .plots import LiveLossPlot
from .progress import progress_bar
from .settings import resolve_device
from .train_config import TrainConfig


class SingleProcess:
    """How the loop shares its work with copies of itself in other processes; this one is alone.

    ``ds9_utils.distributed.DataParallel`` overrides these methods so that every process (a *rank*) trains
    the same model on its own rows of each batch and the processes stay in step; see that module.
    """

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, draws plots and shows progress."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls (a data-parallel wrapper that averages gradients, or the model)."""
        return model

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a batch of ``batch_size``."""
        return slice(0, batch_size)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average of ``values`` over all processes (each measured on its own rows)."""
        return values

    def any(self, flag: bool) -> bool:
        """True when any process says True: every process then takes the same decision, e.g. to stop."""
        return flag


def set_seed(seed: int) -> None:
    """Seed torch's global generators (CPU and every GPU), so model initialisation and dropout repeat."""
    torch.manual_seed(seed)


def get_batch(
    data: Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    rows: slice | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick ``batch_size`` random windows of ``block_size`` tokens; the targets are the inputs shifted by one.

    The indices are drawn on the CPU from ``generator``, so the same seed gives the same batches on any device.
    ``rows`` keeps only those rows of the batch (a data-parallel process's share): all ``batch_size``
    indices are still drawn, so processes that share a seed stay in step and together read the whole batch.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got shape {tuple(data.shape)}")
    if len(data) <= block_size:
        raise ValueError(
            f"data has {len(data)} tokens but a window needs block_size + 1 = {block_size + 1}: "
            "use more text or a smaller block_size"
        )
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    if rows is not None:
        starts = starts[rows]
    x = torch.stack([data[i : i + block_size] for i in starts])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts])
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


WARMUP_SHARE = 0.05  # with a time budget, the warm-up takes at most this share of it


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Learning rate for ``step``: a linear warm-up to ``learning_rate``, then a decay to ``min_lr``.

    The warm-up keeps the first, badly-informed updates small while AdamW's moment estimates settle; the decay
    lets the model settle into a minimum at the end. ``cfg.schedule`` shapes the decay: "cosine" bends
    down from the end of the warm-up; "wsd" holds the full rate, then falls in a straight line over the last
    ``decay_share`` of the run (the speedruns' warm-up, stable, decay: more of the run at the full rate).

    The warm-up counts steps (it is the optimizer's updates that need it). The decay counts steps up to
    ``lr_decay_steps`` (default ``max_steps``), or, with a time budget (``max_seconds``), the fraction
    ``elapsed / max_seconds`` of it spent: then the rate reaches ``min_lr`` exactly when time is up, however
    fast this machine is. With a time budget the warm-up also ends once ``WARMUP_SHARE`` of the budget is
    spent, whichever comes first: on a slow machine 100 steps could otherwise take half of a two-minute budget
    (measured: 53 s of 120 on a 2-core CPU).
    """
    if step < cfg.warmup_steps:
        warmup = (step + 1) / cfg.warmup_steps
        if cfg.max_seconds is not None:
            warmup = max(warmup, elapsed / (WARMUP_SHARE * cfg.max_seconds))
        if warmup <= 1.0:  # past 1: the share of the budget is spent, the cosine has begun
            return cfg.learning_rate * warmup
    if cfg.max_seconds is not None:
        progress = min(elapsed / cfg.max_seconds, 1.0)
    else:
        decay_steps = cfg.max_steps if cfg.lr_decay_steps is None else cfg.lr_decay_steps
        if step >= decay_steps:
            return cfg.min_lr
        progress = (step - cfg.warmup_steps) / (decay_steps - cfg.warmup_steps)
    if cfg.schedule == "wsd":
        remaining = min((1.0 - progress) / cfg.decay_share, 1.0)  # 1 while stable, then down to 0
    else:
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))  # goes from 1 to 0
    return cfg.min_lr + remaining * (cfg.learning_rate - cfg.min_lr)


def _synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so that a clock read afterwards measures what really ran."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str | torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Autocast to the device's fastest correct precision (see ``ds9_utils.precision``); nothing when disabled."""
    return precision.autocast(device, precision.device_precision(device, enabled))


@torch.inference_mode()
def estimate_loss(
    model: torch.nn.Module,
    splits: dict[str, Tensor],
    *,
    eval_iters: int = 20,
    batch_size: int = 12,
    block_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    autocast: bool = True,
    rows: slice | None = None,
) -> dict[str, float]:
    """Mean loss (nats per token) over ``eval_iters`` random batches of each split, in eval mode.

    The batches come from a generator seeded with ``seed``, so every call sees the same windows: a change
    between two calls is the model's doing, not the sample's. Dropout is off, and no gradients are kept.
    ``rows`` measures only those rows of each batch (see ``get_batch``).
    """
    block_size = block_size or model.config.block_size
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = {}
    for name, data in splits.items():
        generator = torch.Generator().manual_seed(seed)
        total = torch.zeros((), device=device)
        for _ in range(eval_iters):
            x, y = get_batch(data, block_size, batch_size, generator, device, rows)
            with _autocast(device, autocast):
                _, loss = model(x, y)
            total += loss.float()
        losses[name] = (total / eval_iters).item()
    model.train(was_training)
    return losses


def new_history() -> dict[str, list]:
    """An empty training history: one entry per evaluation ("seconds": training time when it was taken)."""
    return {"steps": [], "train_loss": [], "val_loss": [], "lr": [], "seconds": []}


@dataclass
class TrainResult:
    """What a training run did: the loss curves and the final numbers."""

    history: dict[str, list]
    val_loss: float  # nats per token at the last evaluation
    val_bpc: float  # the same in bits per character
    train_loss: float
    best_val_loss: float
    steps: int  # optimizer steps taken in total (including those before a resume)
    tokens_per_second: float  # training throughput of this call, evaluation excluded
    seconds: float  # wall-clock time of this call
    stop_reason: str  # "max_steps", "max_seconds" or "callback"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- one step


class TrainingStep:
    """One optimisation step: forward and backward in the run's precision, clip the gradient, update.

    It knows nothing of time, evaluation, checkpoints or progress: that is the loop's business (``train``).
    It decides, once, how the step runs on this device (``ds9_utils.precision``): the number format, the loss
    scaler that float16 needs, and whether the network is compiled. A compiler that fails at the first step
    (its errors surface only then) is dropped with a warning, and the step runs eager.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        device: torch.device,
    ):
        self.network, self.optimizer, self.cfg, self.device = network, optimizer, cfg, device
        self.compiled = precision.should_compile(device, network, cfg.compile)
        self.module = torch.compile(network) if self.compiled else network
        self.precision = precision.device_precision(device, cfg.autocast)
        self.scaler = precision.grad_scaler(device, self.precision)
        self.steps_taken = 0

    def __call__(self, x: Tensor, y: Tensor, lr: float) -> Tensor:
        """Train on the batch ``x`` -> ``y`` at learning rate ``lr``; the batch's loss (before the update)."""
        set_learning_rates(self.optimizer, lr, self.cfg)
        loss = self._forward_backward(x, y)
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            # a data-parallel wrapper's parameters are its model's: the same tensors, measured once
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps_taken += 1
        return loss

    def _forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        try:
            return self._gradients(x, y)
        except Exception as error:  # only compiling can fail here: its errors surface at the first call
            if not self.compiled or self.steps_taken:
                raise
            cause = error  # the compiler's own error, under torch's wrappers:
            while (inner := cause.__cause__ or getattr(cause, "inner_exception", None)) is not None:
                cause = inner
            warnings.warn(
                f"torch.compile failed ({type(cause).__name__}: {str(cause).strip()[:200]}); "
                "training without it (set DS9_COMPILE=0 to skip the attempt)",
                stacklevel=3,
            )
            self.module, self.compiled = self.network, False
            return self._gradients(x, y)

    def _gradients(self, x: Tensor, y: Tensor) -> Tensor:
        with precision.autocast(self.device, self.precision):
            _, loss = self.module(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss


# ---------------------------------------------------------------------------------------------- the loop


clock = time.perf_counter  # the loop's clock (seconds); tests swap in a steady one to make time budgets exact


def _as_token_tensor(data: Tensor | Any, name: str) -> Tensor:
    data = torch.as_tensor(data, dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(data.shape)}")
    return data


def train(
    model: GPT,
    train_data: Tensor,
    val_data: Tensor,
    cfg: TrainConfig,
    *,
    tokenizer: Any = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    live_plot: bool = False,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    parallel: SingleProcess | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` (1-D token ids), evaluating on ``val_data`` every ``eval_interval`` steps.

    The model is moved to ``cfg.device``. With ``checkpoint_path``, a checkpoint is written after every
    evaluation and at the end; with ``resume=True`` too, an existing checkpoint there is loaded (weights,
    optimizer, step, history, random states) and training continues up to ``cfg.max_steps``, so an
    interrupted run picks up where it stopped. To extend a finished run with the same schedule, set
    ``lr_decay_steps`` explicitly. ``callback(step, metrics)`` is called after each evaluation; returning
    True stops training. ``live_plot`` redraws the loss curves in a notebook.

    With ``cfg.max_seconds`` the run is a time budget: the learning rate decays with the seconds spent (see
    ``lr_at``), evaluations excluded, so it ends annealed when time is up, and the progress bar counts
    seconds. The seconds spent are kept in ``history["seconds"]`` (one reading per evaluation), so a resumed
    run continues the schedule where the checkpoint left it. The step runs in the device's fastest correct
    precision and compiled where that pays (``ds9_utils.precision``; ``cfg.autocast``, ``cfg.compile``).

    ``parallel`` runs this call as one of several processes training together (see
    ``ds9_utils.distributed``): ``cfg.batch_size`` is then the global batch, split evenly between them; only
    the main process writes checkpoints, draws the plot, shows progress and calls ``callback``.
    """
    parallel = parallel or SingleProcess()
    if cfg.batch_size % parallel.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} cannot be split evenly between {parallel.world_size} "
            "processes: make it a multiple of the number of processes"
        )
    device = resolve_device(cfg.device)
    train_data = _as_token_tensor(train_data, "train_data")
    val_data = _as_token_tensor(val_data, "val_data")
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if data.numel():  # once, here: a compiled step does not check its batches (see check_token_ids)
            check_token_ids(data, model.config.vocab_size, what=f"{name}'s token ids")
    block_size = model.config.block_size
    model.to(device)
    model.train()
    optimizer = configure_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    step, history, best_val_loss = 0, new_history(), float("inf")

    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        saved = read_resumable_checkpoint(checkpoint_path, model, tokenizer)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history, best_val_loss = saved["step"], saved["history"], saved["best_val_loss"]
        restore_rng_states(saved["rng"], generator)

    # The step calls the (possibly data-parallel) network; evaluation uses the model itself.
    training_step = TrainingStep(parallel.wrap(model), optimizer, cfg, device)
    rows = parallel.rows(cfg.batch_size)
    plot = LiveLossPlot() if live_plot and parallel.is_main else None
    postfix: dict[str, str] = {}
    history.setdefault("seconds", [0.0] * len(history["steps"]))  # a checkpoint from before the time budgets
    seconds_before = history["seconds"][-1] if history["seconds"] else 0.0  # training time of earlier calls
    started = clock()
    eval_seconds, stop_reason = 0.0, "max_steps"

    def elapsed() -> float:
        """Seconds this run has trained, over every call, without its evaluations (the same on every process).

        Evaluations are left out so that measuring does not eat the budget: a slow evaluation on a busy
        machine, or a frequent one, would otherwise leave a short run little time to train.
        """
        _synchronize(device)
        return parallel.mean({"seconds": seconds_before + clock() - started - eval_seconds})["seconds"]

    def evaluate(now: float) -> bool:
        """Measure, record, checkpoint, report; return True when the callback asks to stop."""
        nonlocal best_val_loss, eval_seconds
        eval_started = clock()
        losses = estimate_loss(
            model,
            {"train": train_data, "val": val_data},
            eval_iters=cfg.eval_iters,
            batch_size=cfg.batch_size,
            block_size=block_size,
            device=device,
            autocast=cfg.autocast,
            rows=rows,
        )
        losses = parallel.mean(losses)
        history["steps"].append(step)
        history["train_loss"].append(losses["train"])
        history["val_loss"].append(losses["val"])
        history["lr"].append(lr_at(step, cfg, now))
        history["seconds"].append(round(now, 3))
        best_val_loss = min(best_val_loss, losses["val"])
        if checkpoint_path is not None and parallel.is_main:
            save_checkpoint(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                train_config=cfg,
                step=step,
                history=history,
                best_val_loss=best_val_loss,
                tokenizer=tokenizer,
                generator=generator,
            )
        if plot is not None:
            plot.update(history)
        # the step of the last evaluation beside its loss, so an early score is not read as the current one;
        # "bits" per token, which are bits per character for the course's character models
        postfix.update(val=f"{losses['val']:.3f} (step {step})", bits=f"{bits_per_char(losses['val']):.3f}")
        bar.set_postfix(postfix)
        metrics = {
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "val_bpc": bits_per_char(losses["val"]),
            "lr": lr_at(step, cfg, now),
        }
        wants_stop = callback is not None and parallel.is_main and bool(callback(step, metrics))
        wants_stop = parallel.any(wants_stop)
        eval_seconds += clock() - eval_started
        return wants_stop

    # With a time budget the bar counts seconds, so its estimate of the time left is the budget's.
    timed = cfg.max_seconds is not None
    with progress_bar(
        total=cfg.max_seconds if timed else cfg.max_steps,
        initial=min(seconds_before, cfg.max_seconds) if timed else min(step, cfg.max_steps),
        disable=not (progress and parallel.is_main),
        desc=f"training ({training_step.precision}{', compiled' if training_step.compiled else ''})",
        unit="s" if timed else "step",
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]" if timed else None,
    ) as bar:
        now = elapsed()
        stop = evaluate(now) if not history["steps"] else False  # a fresh run starts with the untrained loss
        if stop:
            stop_reason = "callback"
        while not stop and step < cfg.max_steps:
            now = elapsed() if timed else 0.0
            if timed and now >= cfg.max_seconds:
                bar.update(cfg.max_seconds - bar.n)
                stop_reason = "max_seconds"
                break
            lr = lr_at(step, cfg, now)
            x, y = get_batch(train_data, block_size, cfg.batch_size, generator, device, rows)
            loss = training_step(x, y, lr)
            step += 1
            bar.update(min(now, cfg.max_seconds) - bar.n if timed else 1)
            if step % cfg.log_interval == 0:
                postfix.update(step=str(step), loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")  # .item() waits for GPU
                bar.set_postfix(postfix)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                if evaluate(elapsed()):
                    stop, stop_reason = True, "callback"
        if history["steps"][-1] != step:  # stopped by the clock between two evaluations
            evaluate(elapsed())

    seconds = clock() - started
    training_seconds = seconds - eval_seconds
    steps_this_call = training_step.steps_taken
    tokens = steps_this_call * cfg.batch_size * block_size
    return TrainResult(
        history=history,
        val_loss=history["val_loss"][-1],
        val_bpc=bits_per_char(history["val_loss"][-1]),
        train_loss=history["train_loss"][-1],
        best_val_loss=best_val_loss,
        steps=step,
        tokens_per_second=tokens / training_seconds if steps_this_call else 0.0,
        seconds=seconds,
        stop_reason=stop_reason,
    )
