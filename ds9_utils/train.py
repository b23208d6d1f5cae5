"""Training: random batches, the learning-rate schedule, the loop and evaluation.

The loop is nanoGPT's: sample a batch of random windows, forward, backward, clip the gradient, AdamW step,
and every ``eval_interval`` steps measure the loss on held-out text. Losses are reported in nats (what
cross-entropy computes) and in bits per character (``nats / ln 2``, the number used to compare compressors
and language models; for a character tokenizer a token *is* a character).

A checkpoint (``ds9_utils.checkpoints``) holds everything needed to continue a run exactly where it
stopped, so training N steps, stopping and resuming to 2N gives bit-for-bit the weights of training 2N
steps straight. The presets that name a model and its recipe live in ``ds9_utils.presets``.

The same loop also runs as one of several processes that train together (data parallelism): it asks a
``SingleProcess`` object, which does nothing here, and ``ds9_utils.distributed.DataParallel`` replaces it
under ``torchrun``.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoints import read_resumable_checkpoint, restore_rng_states, save_checkpoint
from .model import GPT
from .settings import resolve_device


@dataclass
class TrainConfig:
    """How to train: batch, schedule, optimizer, evaluation, seed and device."""

    batch_size: int = 12
    max_steps: int = 2000
    max_seconds: float | None = None  # optional wall-clock bound: stop at max_steps or here, whichever first
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # None: decay over the whole run (max_steps)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99  # a little below the usual 0.999: small batches of characters are noisy
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    log_interval: int = 10
    device: str | None = None  # None: settings.choose_device(); checked by settings.resolve_device
    autocast: bool = True  # bfloat16 autocast on cuda; cpu and mps always train in float32

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_interval", "eval_iters", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.warmup_steps < 0:
            raise ValueError("TrainConfig.max_steps and warmup_steps must not be negative")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(
                f"TrainConfig.min_lr ({self.min_lr}) must be between 0 and learning_rate ({self.learning_rate})"
            )
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"TrainConfig.max_seconds must be positive or None, got {self.max_seconds}")


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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for ``step``: a linear warm-up to ``learning_rate``, then a cosine decay to ``min_lr``.

    The warm-up keeps the first, badly-informed updates small while AdamW's moment estimates settle; the decay
    lets the model settle into a minimum at the end.
    """
    decay_steps = cfg.max_steps if cfg.lr_decay_steps is None else cfg.lr_decay_steps
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (decay_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # goes from 1 to 0
    return cfg.min_lr + cosine * (cfg.learning_rate - cfg.min_lr)


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW that decays only the matrices and embeddings (parameters with 2 or more dimensions).

    Weight decay pulls weights towards zero; that regularises the big matrices, but for biases and LayerNorm
    gains it would only fight the values the model needs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    on_cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=on_cuda or None)


def _synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so that a clock read afterwards measures what really ran."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str | torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    device = torch.device(device)
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
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


def bits_per_char(nats: float) -> float:
    """Convert a loss in nats per character to bits per character."""
    return nats / math.log(2)


def new_history() -> dict[str, list]:
    """An empty training history: one entry per evaluation."""
    return {"steps": [], "train_loss": [], "val_loss": [], "lr": []}


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


# ---------------------------------------------------------------------------------------------- live plot


def _loss_curve_png(history: dict[str, list]) -> bytes:
    """Draw the train and validation loss curves (nats on the left, bits per character on the right)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.5))
    axes = figure.subplots()
    axes.plot(history["steps"], history["train_loss"], marker=".", label="train")
    axes.plot(history["steps"], history["val_loss"], marker=".", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats per character)")
    axes.secondary_yaxis("right", functions=(bits_per_char, lambda bits: bits * math.log(2))).set_ylabel(
        "bits per character"
    )
    if history["val_loss"]:
        latest = history["val_loss"][-1]
        axes.set_title(f"step {history['steps'][-1]}: validation {latest:.3f} nats = {bits_per_char(latest):.3f} bpc")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


class _LiveLossPlot:
    """Redraws the loss curves in place under a notebook cell; does nothing outside Jupyter."""

    def __init__(self) -> None:
        self.handle = None
        try:
            from IPython import get_ipython
            from IPython.display import Markdown, display
        except ImportError:
            return
        shell = get_ipython()
        if shell is None or not hasattr(shell, "kernel"):  # a plain script or terminal IPython
            return
        self.handle = display(Markdown("*the loss curves appear after the first evaluation*"), display_id=True)

    def update(self, history: dict[str, list]) -> None:
        if self.handle is not None:
            from IPython.display import Image

            self.handle.update(Image(data=_loss_curve_png(history), format="png"))


# ---------------------------------------------------------------------------------------------- the loop


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

    network = parallel.wrap(model)  # what the training step calls; evaluation uses the model itself
    rows = parallel.rows(cfg.batch_size)
    plot = _LiveLossPlot() if live_plot and parallel.is_main else None
    postfix: dict[str, str] = {}
    started = time.perf_counter()
    eval_seconds, steps_this_call, stop_reason = 0.0, 0, "max_steps"

    def evaluate() -> bool:
        """Measure, record, checkpoint, report; return True when the callback asks to stop."""
        nonlocal best_val_loss, eval_seconds
        _synchronize(device)
        eval_started = time.perf_counter()
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
        history["lr"].append(lr_at(step, cfg))
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
        postfix.update(val=f"{losses['val']:.3f}", bpc=f"{bits_per_char(losses['val']):.3f}")
        bar.set_postfix(postfix)
        eval_seconds += time.perf_counter() - eval_started
        metrics = {
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "val_bpc": bits_per_char(losses["val"]),
            "lr": lr_at(step, cfg),
        }
        wants_stop = callback is not None and parallel.is_main and bool(callback(step, metrics))
        return parallel.any(wants_stop)

    with tqdm(
        total=cfg.max_steps,
        initial=min(step, cfg.max_steps),
        disable=not (progress and parallel.is_main),
        desc="training",
        unit="step",
    ) as bar:
        stop = evaluate() if not history["steps"] else False  # a fresh run starts with the untrained loss
        if stop:
            stop_reason = "callback"
        while not stop and step < cfg.max_steps:
            if cfg.max_seconds is not None and parallel.any(time.perf_counter() - started >= cfg.max_seconds):
                stop_reason = "max_seconds"
                break
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_data, block_size, cfg.batch_size, generator, device, rows)
            with _autocast(device, cfg.autocast):
                _, loss = network(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            steps_this_call += 1
            bar.update(1)
            if step % cfg.log_interval == 0:
                postfix.update(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}")  # .item() waits for the GPU
                bar.set_postfix(postfix)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                if evaluate():
                    stop, stop_reason = True, "callback"
        if history["steps"][-1] != step:  # stopped by the clock between two evaluations
            evaluate()

    seconds = time.perf_counter() - started
    training_seconds = seconds - eval_seconds
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
