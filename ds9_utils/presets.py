"""The presets: named model sizes and training recipes, and the one place that picks a default.

A preset is a model shape (``GPTConfig`` arguments) and a recipe (``TrainConfig``) that fit a kind of machine.
The command line, the course model (``ds9_utils.course``), the notebooks and the data-parallel runs all take
their defaults from here, so "which model does this machine train?" has one answer. A new preset is one
entry in ``PRESETS``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .model import GPTConfig
from .settings import choose_device, quick_mode
from .train_config import TrainConfig


@dataclass(frozen=True)
class Preset:
    """A named model size and training recipe that fit a given machine."""

    name: str
    description: str
    model_kwargs: dict[str, Any]  # GPTConfig arguments except vocab_size, which comes from the tokenizer
    train_config: TrainConfig

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **self.model_kwargs)


#: The speedruns' architecture (modded-nanogpt, nanochat), each change an option of ``GPTConfig``; chapter 09
#: teaches every one, and ``benchmarks/bench_recipe.py`` measures what each buys.
MODERN_ARCHITECTURE: dict[str, Any] = dict(
    positional="rotary", norm="rms", activation="relu2", qk_norm=True, zero_init=True, tie_embeddings=False
)
#: ... and their training recipe: Muon for the hidden matrices, then a warm-up, a stable stretch and a straight
#: decay of the learning rate.
MODERN_TRAINING: dict[str, Any] = dict(optimizer="muon", muon_lr=0.02, schedule="wsd")

#: The course model's shape: 0.8 M parameters that learn fast on a 2-core CPU (chapter 09 says why).
COURSE_SHAPE: dict[str, Any] = dict(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0, **MODERN_ARCHITECTURE)
#: The number of steps notebook 09 trains the course model for: chosen from the measured budget curve
#: (``ds9_utils.budget_curve``), the fewest that beat the best counting model by 0.15 bits with room to spare.
COURSE_STEPS = 8_000
#: ... and its recipe. A step budget, not a time budget: the model, and every chapter built on it, is then the
#: same on a fast machine and a slow one (in the same number format); only the minutes differ.
COURSE_RECIPE = TrainConfig(
    batch_size=8,
    max_steps=COURSE_STEPS,
    learning_rate=3e-3,
    min_lr=3e-4,
    warmup_steps=100,
    eval_interval=1000,  # every evaluation is time not spent training: 2 x 50 batches every 1,000 steps
    eval_iters=50,
    **MODERN_TRAINING,
)

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        description="a toy model that trains in a few seconds: for tests and DS9_QUICK=1 runs",
        model_kwargs=dict(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **MODERN_ARCHITECTURE),
        train_config=TrainConfig(
            batch_size=16,
            max_steps=200,
            learning_rate=3e-3,
            min_lr=3e-4,
            warmup_steps=20,
            eval_interval=50,
            eval_iters=10,
            log_interval=10,
            **MODERN_TRAINING,
        ),
    ),
    "brief": Preset(
        name="brief",
        description="sized for a budget of about two minutes on a CPU: what `train --max-seconds 120` trains",
        model_kwargs=COURSE_SHAPE,
        train_config=replace(
            COURSE_RECIPE,
            max_steps=1_000_000,  # only a cap: the time budget decides
            max_seconds=120.0,
            warmup_steps=50,
            eval_iters=20,
        ),
    ),
    "small": Preset(
        name="small",
        description="the cpu model's shape trained for a few minutes: what a chapter trains when notebook 09's "
        "model is missing",
        model_kwargs=COURSE_SHAPE,
        train_config=replace(COURSE_RECIPE, max_steps=1500, warmup_steps=50, eval_interval=500, eval_iters=20),
    ),
    "cpu": Preset(
        name="cpu",
        description="the main job's model: the course model's shape and recipe for a time budget of 9 minutes, so "
        "that `python -m ds9_utils` is done in 10 on any CPU",
        # DS9, 120 s on 2 cores (bfloat16), held-out nats, one seed: this recipe 1.380 (1,115 steps); with
        # batches of 16, 1.400 (558 steps). The classic recipe at the same shape: 2.188 (1,226 steps).
        model_kwargs=COURSE_SHAPE,
        train_config=replace(
            COURSE_RECIPE,
            max_steps=1_000_000,  # only a cap: the time budget decides, and anneals the rate when it is spent
            max_seconds=540.0,  # 9 minutes of training and ~0.5 of evaluations: the main job is done in 10
        ),
    ),
    "course": Preset(
        name="course",
        description="the course model of notebook 09: the cpu preset's model and recipe for a fixed number of "
        "steps, so the same seed gives the same model on a slow machine and a fast one",
        model_kwargs=COURSE_SHAPE,
        train_config=COURSE_RECIPE,
    ),
    "classic": Preset(
        name="classic",
        description="the GPT-2 recipe of chapters 05-08 at the course model's shape and budget: LayerNorm, "
        "learned positions, GELU, a tied head, AdamW and a cosine decay",
        # Many small steps beat a bigger model. DS9, 270 s on 2 cores (float32), held-out nats: this recipe 1.390
        # (3,461 steps); 192 wide 1.509 (1,903 steps); 192 wide with 32 windows a batch at a rate of 2e-3
        # needed all 540 s for 1.388.
        model_kwargs=dict(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        train_config=TrainConfig(
            batch_size=8,
            max_steps=1_000_000,
            max_seconds=540.0,
            learning_rate=3e-3,
            min_lr=3e-4,
            warmup_steps=100,
            eval_interval=1000,
            eval_iters=50,
        ),
    ),
    "gpu": Preset(
        name="gpu",
        description="nanoGPT's shakespeare-char model: 6 layers, 384 wide, a few minutes on a modern GPU",
        model_kwargs=dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        train_config=TrainConfig(
            batch_size=64,
            max_steps=5000,
            learning_rate=1e-3,
            min_lr=1e-4,
            warmup_steps=100,
            eval_interval=250,
            eval_iters=200,
        ),
    ),
}

#: The presets a time budget on a CPU chooses between (``default_preset``): the classic recipe is only ever named.
BUDGET_PRESETS = ("brief", "cpu")

COURSE_PRESET = "course"  # the course model of notebook 09 and the README
MAIN_JOB_PRESET = "cpu"  # what `python -m ds9_utils` trains on a CPU: a time budget, done in 10 minutes


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or one clear line that lists the others."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def default_preset(device: str | None = None, max_seconds: float | None = None) -> str:
    """The preset that suits this run: "quick" in quick mode, "gpu" on cuda, otherwise "cpu".

    Given a time budget on a CPU, the preset made for the largest budget that fits in it (the smallest when
    none does): a model that is right for nine minutes is too big to learn much in two.
    """
    if quick_mode():
        return "quick"
    if (device or choose_device()).startswith("cuda"):
        return "gpu"
    if max_seconds is None:
        return MAIN_JOB_PRESET
    budgets = sorted((PRESETS[name].train_config.max_seconds, name) for name in BUDGET_PRESETS)
    fitting = [name for seconds, name in budgets if seconds <= max_seconds]
    return fitting[-1] if fitting else budgets[0][1]


def course_preset() -> str:
    """The course model's preset, the one notebook 09 trains: "quick" in quick mode, otherwise "course"."""
    return "quick" if quick_mode() else COURSE_PRESET


def fallback_preset() -> str:
    """What a chapter trains when notebook 09's model is missing: "quick" in quick mode, otherwise "small"."""
    return "quick" if quick_mode() else "small"
