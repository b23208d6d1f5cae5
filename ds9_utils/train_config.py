"""How to train: the ``TrainConfig`` dataclass, on its own so that every module can name a recipe.

The training loop (``ds9_utils.train``), the checkpoints that store a recipe (``ds9_utils.checkpoints``), the
presets that name recipes (``ds9_utils.presets``) and the optimizers (``ds9_utils.optim``) all read it; it
imports none of them, so none of them imports another through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    """How to train: batch, schedule, optimizer, evaluation, seed and device.

    optimizer: "adamw" (every weight, as GPT-2 and nanoGPT) or "muon" (the hidden matrices of the blocks take
        Muon's orthogonalised update at ``muon_lr``; embeddings, the output head and the vectors take AdamW
        at ``learning_rate``; see ``ds9_utils.optim``).
    schedule: "cosine" (warm-up, then a cosine down to ``min_lr``) or "wsd" (warm-up, a stable stretch at the
        full rate, then a straight line down to ``min_lr`` over the last ``decay_share`` of the run).
    """

    batch_size: int = 12
    max_steps: int = 2000
    # A time budget: the warm-up and decay are laid out over these seconds of training (evaluations are not
    # counted), so the run ends annealed when time is up; max_steps then only caps it. None: count steps.
    max_seconds: float | None = None
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # None: decay over the whole run (max_steps); unused with max_seconds
    schedule: str = "cosine"
    decay_share: float = 0.4  # "wsd": the share of the run spent decaying
    optimizer: str = "adamw"
    muon_lr: float = 0.02  # "muon": the hidden matrices' learning rate (AdamW's parameters keep learning_rate)
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99  # a little below the usual 0.999: small batches of characters are noisy
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    log_interval: int = 10
    device: str | None = None  # None: settings.choose_device(); checked by settings.resolve_device
    autocast: bool = True  # the device's fastest correct precision (precision.choose_precision); False: fp32
    compile: bool | None = None  # torch.compile the model; None: where it pays (precision.should_compile)

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
        if self.max_seconds is not None and not (math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(
                f"TrainConfig.max_seconds must be a positive number of seconds or None, got {self.max_seconds}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.decay_share <= 1:
            raise ValueError(f"TrainConfig.decay_share must be in (0, 1], got {self.decay_share}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (self.muon_lr > 0 and 0 <= self.muon_momentum < 1):
            raise ValueError(
                f"TrainConfig.muon_lr must be positive and muon_momentum in [0, 1), got {self.muon_lr} and "
                f"{self.muon_momentum}"
            )
