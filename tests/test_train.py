"""Tests for ds9_utils.train: schedule, batches, optimizer groups, the loop, checkpoints and exact resume.

Every model here is tiny (one or two layers, 16-32 wide) so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import pytest
import torch

import ds9_utils.train as training
from ds9_utils.checkpoints import CHECKSUM_KEY, Checkpoint, load_checkpoint, save_checkpoint
from ds9_utils.model import GPT, GPTConfig
from ds9_utils.optim import configure_optimizer
from ds9_utils.plots import loss_curve_png
from ds9_utils.precision import (
    autocast,
    choose_precision,
    cpu_has_native_bf16,
    device_precision,
    grad_scaler,
    should_compile,
)
from ds9_utils.presets import MODERN_ARCHITECTURE, MODERN_TRAINING, PRESETS, default_preset
from ds9_utils.tokenizers import CharTokenizer
from ds9_utils.train import (
    WARMUP_SHARE,
    SingleProcess,
    estimate_loss,
    get_batch,
    lr_at,
    set_seed,
    train,
)
from ds9_utils.train_config import TrainConfig

#: GPTConfig's defaults for the options the modern recipe changes: GPT-2's choices.
CLASSIC_DEFAULTS = dict(
    positional="learned", norm="layer", activation="gelu", qk_norm=False, zero_init=False, tie_embeddings=True
)

TEXT = "Odo: I'm a changeling. Quark: And I'm a Ferengi. Sisko: Report to Ops, both of you!\n" * 12
TOKENIZER = CharTokenizer.from_text(TEXT)
DATA = torch.tensor(TOKENIZER.encode(TEXT), dtype=torch.long)
TRAIN_DATA, VAL_DATA = DATA[: int(0.9 * len(DATA))], DATA[int(0.9 * len(DATA)) :]


def tiny_model(seed: int = 0, dropout: float = 0.1, vocab_size: int = TOKENIZER.vocab_size, **options) -> GPT:
    set_seed(seed)
    return GPT(
        GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=dropout, **options)
    )


def tiny_config(**changes) -> TrainConfig:
    settings = dict(
        batch_size=4,
        max_steps=12,
        learning_rate=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        lr_decay_steps=12,
        eval_interval=3,
        eval_iters=2,
        log_interval=1,
        device="cpu",
        seed=7,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def without_clock(history: dict) -> dict:
    """A history without its clock readings ("seconds"), which differ between any two runs."""
    return {name: values for name, values in history.items() if name != "seconds"}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), f"parameter {name} differs"


# ---------------------------------------------------------------------------------------------- pieces


def test_lr_schedule_warms_up_peaks_and_decays_to_min_lr():
    cfg = TrainConfig(max_steps=1000, warmup_steps=100, learning_rate=1e-3, min_lr=1e-4)
    lrs = [lr_at(step, cfg) for step in range(1200)]
    warmup, decay = lrs[:100], lrs[100:1000]
    assert 0 < lrs[0] < 0.02 * cfg.learning_rate
    assert all(b > a for a, b in zip(warmup, warmup[1:])), "warm-up must rise every step"
    assert max(lrs) == pytest.approx(cfg.learning_rate)
    assert lrs[99] == pytest.approx(cfg.learning_rate) and lrs[100] == pytest.approx(cfg.learning_rate)
    assert all(b <= a for a, b in zip(decay, decay[1:])), "after warm-up the rate only falls"
    assert lrs[550] == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2)  # cosine is halfway at midpoint
    assert lrs[1000] == cfg.min_lr and lrs[1199] == cfg.min_lr
    shorter = replace(cfg, lr_decay_steps=500)
    assert lr_at(500, shorter) == cfg.min_lr and lr_at(499, shorter) > cfg.min_lr


def test_wsd_schedule_holds_the_full_rate_then_falls_in_a_straight_line():
    cfg = TrainConfig(
        max_steps=1100, warmup_steps=100, learning_rate=1e-3, min_lr=1e-4, schedule="wsd", decay_share=0.4
    )
    lrs = [lr_at(step, cfg) for step in range(1200)]
    assert lrs[99] == pytest.approx(cfg.learning_rate)
    assert all(lr == pytest.approx(cfg.learning_rate) for lr in lrs[100:700]), "stable for the first 60% after warm-up"
    decay = lrs[700:1100]
    steps = [b - a for a, b in zip(decay, decay[1:])]
    assert all(step == pytest.approx(steps[0]) and step < 0 for step in steps), "a straight line down"
    assert lrs[900] == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2)
    assert lrs[1100] == cfg.min_lr and lrs[1199] == cfg.min_lr
    timed = replace(cfg, max_steps=10**9, max_seconds=100.0, warmup_steps=10)
    assert lr_at(50, timed, elapsed=59.0) == pytest.approx(cfg.learning_rate)
    assert lr_at(50, timed, elapsed=80.0) == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2)
    assert lr_at(50, timed, elapsed=100.0) == pytest.approx(cfg.min_lr)


def test_get_batch_targets_are_inputs_shifted_by_one_and_seeded():
    data = torch.arange(100)
    x, y = get_batch(data, block_size=8, batch_size=5, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    again, _ = get_batch(data, 8, 5, torch.Generator().manual_seed(1))
    other, _ = get_batch(data, 8, 5, torch.Generator().manual_seed(2))
    assert torch.equal(x, again) and not torch.equal(x, other)
    with pytest.raises(ValueError, match="smaller block_size"):
        get_batch(torch.arange(8), block_size=8, batch_size=1)


def test_weight_decay_applies_to_matrices_only():
    model = tiny_model()
    optimizer = configure_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert decayed["params"] and all(p.dim() >= 2 for p in decayed["params"])
    assert not_decayed["params"] and all(p.dim() < 2 for p in not_decayed["params"])
    layer_norm_weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norm_weights and all(any(w is p for p in not_decayed["params"]) for w in layer_norm_weights)
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_groups == {id(p) for p in model.parameters()}, "every parameter is in exactly one group"


def test_estimate_loss_is_repeatable_and_restores_training_mode():
    model = tiny_model()
    model.train()
    first = estimate_loss(model, {"train": TRAIN_DATA, "val": VAL_DATA}, eval_iters=3, batch_size=4)
    second = estimate_loss(model, {"train": TRAIN_DATA, "val": VAL_DATA}, eval_iters=3, batch_size=4)
    assert first == second, "dropout must be off and the batches fixed"
    assert model.training
    assert first["val"] == pytest.approx(math.log(TOKENIZER.vocab_size), rel=0.2)  # untrained: near uniform


def test_presets_build_configs_and_default_follows_device(monkeypatch):
    for name, preset in PRESETS.items():
        assert preset.name == name
        config = preset.gpt_config(vocab_size=80)
        assert config.vocab_size == 80 and config.n_embd % config.n_head == 0
    assert PRESETS["gpu"].model_kwargs["n_embd"] == 384 and PRESETS["gpu"].train_config.max_steps == 5000
    monkeypatch.delenv("DS9_QUICK", raising=False)
    assert default_preset("cuda") == "gpu" and default_preset("cpu") == "cpu" and default_preset("mps") == "cpu"
    monkeypatch.setenv("DS9_QUICK", "1")
    assert default_preset("cuda") == "quick" and default_preset("cpu", max_seconds=120) == "quick"


def test_a_time_budget_on_a_cpu_picks_the_preset_made_for_it(monkeypatch):
    monkeypatch.delenv("DS9_QUICK", raising=False)
    brief, course = (PRESETS[name].train_config.max_seconds for name in ("brief", "cpu"))
    assert brief < course
    for seconds, expected in [(10, "brief"), (brief, "brief"), (course - 1, "brief"), (course, "cpu"), (7200, "cpu")]:
        assert default_preset("cpu", max_seconds=seconds) == expected, seconds
    assert default_preset("cuda", max_seconds=60) == "gpu", "a GPU trains its own preset in any budget"
    assert default_preset("cpu") == "cpu", "no budget: the course model"
    assert all(default_preset("cpu", max_seconds=s) != "classic" for s in (60, 540, 7200)), "classic is only named"


def test_the_course_presets_train_the_modern_recipe_and_classic_keeps_gpt2s():
    for name in ("quick", "brief", "small", "cpu", "course"):
        config, recipe = PRESETS[name].gpt_config(80), PRESETS[name].train_config
        assert all(getattr(config, key) == value for key, value in MODERN_ARCHITECTURE.items()), name
        assert all(getattr(recipe, key) == value for key, value in MODERN_TRAINING.items()), name
    classic, course = PRESETS["classic"], PRESETS["cpu"]
    assert classic.gpt_config(80) == GPTConfig(vocab_size=80, **{**course.model_kwargs, **CLASSIC_DEFAULTS})
    assert replace(classic.train_config, **MODERN_TRAINING) == course.train_config, "the same budget and batches"


def test_train_config_rejects_nonsense():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(learning_rate=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    for budget in (0.0, -5.0, float("nan"), float("inf")):  # a budget must be a real, positive time
        with pytest.raises(ValueError, match="max_seconds"):
            TrainConfig(max_seconds=budget)
    for changes, message in (
        ({"schedule": "linear"}, "schedule"),
        ({"decay_share": 0.0}, "decay_share"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"muon_momentum": 1.0}, "muon"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes)


# ---------------------------------------------------------------------------------------------- the loop


def test_loss_decreases_on_a_learnable_sequence():
    cycle = torch.arange(6).repeat(200)  # 0 1 2 3 4 5 0 1 ...: the next token is always predictable
    model = tiny_model(dropout=0.0, vocab_size=6)
    cfg = tiny_config(
        max_steps=80,
        lr_decay_steps=None,
        learning_rate=1e-2,
        min_lr=1e-3,
        warmup_steps=5,
        batch_size=8,
        eval_interval=40,
        eval_iters=4,
    )
    result = train(model, cycle, cycle, cfg, progress=False)
    assert result.history["steps"] == [0, 40, 80]
    assert result.history["val_loss"][0] > 1.4  # ln 6 = 1.79 before training
    assert result.val_loss < 0.2, result.history
    assert result.val_bpc == pytest.approx(result.val_loss / math.log(2))
    assert result.steps == 80 and result.stop_reason == "max_steps" and result.tokens_per_second > 0
    json.dumps(result.to_dict())  # plain values only


def test_max_seconds_stops_training_early(steady_clock):
    cfg = tiny_config(max_steps=1_000_000, lr_decay_steps=None, max_seconds=2.0, eval_interval=100_000)
    result = train(tiny_model(), TRAIN_DATA, VAL_DATA, cfg, progress=False, live_plot=True)
    assert result.stop_reason == "max_seconds"
    assert 0 < result.steps < 1_000_000 and result.seconds < 10
    assert result.history["steps"] == [0, result.steps], "the run still ends with an evaluation"


def test_callback_sees_every_evaluation_and_can_stop():
    seen = []

    def stop_at_six(step, metrics):
        seen.append((step, metrics["val_bpc"]))
        return step >= 6

    result = train(tiny_model(), TRAIN_DATA, VAL_DATA, tiny_config(), progress=False, callback=stop_at_six)
    assert [step for step, _ in seen] == [0, 3, 6]
    assert result.steps == 6 and result.stop_reason == "callback"


class QuietRank(SingleProcess):
    """A process that is not the main one: it trains like any other but must not write, plot or call back."""

    rank = 1
    world_size = 2


def test_only_the_main_process_checkpoints_and_calls_back(tmp_path):
    calls = []
    model = tiny_model(dropout=0.0)
    train(
        model,
        TRAIN_DATA,
        VAL_DATA,
        tiny_config(),
        checkpoint_path=tmp_path / "ckpt.pt",
        progress=False,
        callback=lambda step, metrics: calls.append(step),
        parallel=QuietRank(),
    )
    assert not (tmp_path / "ckpt.pt").exists() and calls == []
    main = tiny_model(dropout=0.0)
    train(
        main,
        TRAIN_DATA,
        VAL_DATA,
        tiny_config(),
        checkpoint_path=tmp_path / "ckpt.pt",
        progress=False,
        callback=lambda step, metrics: calls.append(step),
        parallel=SingleProcess(),
    )
    assert (tmp_path / "ckpt.pt").exists() and calls == [0, 3, 6, 9, 12]


def test_get_batch_rows_keep_one_share_of_the_same_draw():
    x, y = get_batch(DATA, 8, 6, torch.Generator().manual_seed(5))
    share_x, share_y = get_batch(DATA, 8, 6, torch.Generator().manual_seed(5), rows=slice(3, 6))
    assert torch.equal(share_x, x[3:]) and torch.equal(share_y, y[3:])
    assert SingleProcess().rows(6) == slice(0, 6)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        train(tiny_model(), TRAIN_DATA, VAL_DATA, tiny_config(batch_size=5), parallel=QuietRank(), progress=False)


def test_loss_curve_png_is_drawn():
    history = {"steps": [0, 10], "train_loss": [4.0, 2.5], "val_loss": [4.1, 2.7], "lr": [1e-4, 1e-3]}
    assert loss_curve_png(history).startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = tiny_model()
    result = train(
        model, TRAIN_DATA, VAL_DATA, tiny_config(max_steps=6), tokenizer=TOKENIZER, checkpoint_path=path, progress=False
    )
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: safe loading works
    assert raw["step"] == 6
    loaded = load_checkpoint(path, device="cpu")
    assert isinstance(loaded, Checkpoint)
    assert loaded.step == 6 and loaded.history == result.history and loaded.model_config == model.config
    assert loaded.train_config == tiny_config(max_steps=6)
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("Quark")) == "Quark"
    assert loaded.tokenizer.vocab_size == TOKENIZER.vocab_size
    assert not loaded.model.training
    model.eval()
    x, _ = get_batch(VAL_DATA, 8, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded.model(x)[0])


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = tiny_model()
    train(model, TRAIN_DATA, VAL_DATA, tiny_config(max_steps=4), checkpoint_path=path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "no temporary files are left behind"
    unpicklable = {"steps": [(n for n in range(3))]}  # a generator cannot be saved: the write fails midway
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, the old file must survive
        save_checkpoint(path, model=model, optimizer=None, train_config=tiny_config(), step=99, history=unpicklable)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path, device="cpu").step == 4, "the previous checkpoint is intact"


def test_missing_or_foreign_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m ds9_utils train"):
        load_checkpoint(tmp_path / "nothing.pt", device="cpu")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="python -m ds9_utils train"):
        load_checkpoint(tmp_path / "notes.pt", device="cpu")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a ds9_utils checkpoint"):
        load_checkpoint(tmp_path / "other.pt", device="cpu")


# ---------------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def straight_run():
    """12 steps in one go, with dropout on, so the global random state matters too."""
    model = tiny_model(seed=0)
    result = train(model, TRAIN_DATA, VAL_DATA, tiny_config(max_steps=12), progress=False)
    return model, result


def test_resume_gives_exactly_the_weights_of_a_straight_run(tmp_path, straight_run):
    straight_model, straight_result = straight_run
    path = tmp_path / "ckpt.pt"
    train(tiny_model(seed=0), TRAIN_DATA, VAL_DATA, tiny_config(max_steps=6), checkpoint_path=path, progress=False)
    torch.manual_seed(12345)  # whatever happened to the global generator in between is undone by the resume
    resumed_model = tiny_model(seed=99)  # the resume replaces these weights
    result = train(
        resumed_model,
        TRAIN_DATA,
        VAL_DATA,
        tiny_config(max_steps=12),
        checkpoint_path=path,
        resume=True,
        progress=False,
    )
    assert result.steps == 12
    assert_same_weights(straight_model, resumed_model)
    assert without_clock(result.history) == without_clock(straight_result.history)


MODERN_MODEL = dict(
    positional="rotary", norm="rms", activation="relu2", qk_norm=True, zero_init=True, tie_embeddings=False
)


def test_a_modern_recipe_run_resumes_exactly_with_muon_state(tmp_path):
    """Muon's momentum buffers and AdamW's moments travel in the checkpoint: stop at 6, resume to 12, same weights."""
    cfg = tiny_config(optimizer="muon", schedule="wsd", muon_lr=0.02, max_steps=12)
    straight = tiny_model(seed=0, **MODERN_MODEL)
    straight_result = train(straight, TRAIN_DATA, VAL_DATA, cfg, progress=False)
    path = tmp_path / "modern.pt"
    train(
        tiny_model(seed=0, **MODERN_MODEL),
        TRAIN_DATA,
        VAL_DATA,
        replace(cfg, max_steps=6),
        checkpoint_path=path,
        progress=False,
    )
    resumed = tiny_model(seed=5, **MODERN_MODEL)
    result = train(resumed, TRAIN_DATA, VAL_DATA, cfg, checkpoint_path=path, resume=True, progress=False)
    assert result.steps == 12
    assert_same_weights(straight, resumed)
    assert without_clock(result.history) == without_clock(straight_result.history)
    assert straight_result.val_loss < math.log(TOKENIZER.vocab_size)  # it learned (the start is uniform)


def test_a_checkpoint_from_before_the_modern_options_still_loads_and_resumes(tmp_path, straight_run):
    path = tmp_path / "old.pt"
    train(tiny_model(seed=0), TRAIN_DATA, VAL_DATA, tiny_config(max_steps=6), checkpoint_path=path, progress=False)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for option in ("norm", "activation", "qk_norm", "zero_init", "tie_embeddings"):
        raw["model_config"].pop(option)  # what an older version wrote
    for option in ("schedule", "decay_share", "optimizer", "muon_lr", "muon_momentum"):
        raw["train_config"].pop(option)
    raw.pop(CHECKSUM_KEY)  # older versions wrote none either
    torch.save(raw, path)
    assert load_checkpoint(path, device="cpu").model_config == tiny_model().config
    resumed = tiny_model(seed=3)
    train(resumed, TRAIN_DATA, VAL_DATA, tiny_config(max_steps=12), checkpoint_path=path, resume=True, progress=False)
    assert_same_weights(straight_run[0], resumed)


def test_interrupted_run_keeps_its_checkpoint_and_resumes_exactly(tmp_path, straight_run):
    straight_model, _ = straight_run
    path = tmp_path / "ckpt.pt"

    def interrupt_at_nine(step, metrics):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_model(seed=0),
            TRAIN_DATA,
            VAL_DATA,
            tiny_config(),
            checkpoint_path=path,
            progress=False,
            callback=interrupt_at_nine,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path, device="cpu").step == 9
    resumed_model = tiny_model(seed=0)
    train(resumed_model, TRAIN_DATA, VAL_DATA, tiny_config(), checkpoint_path=path, resume=True, progress=False)
    assert_same_weights(straight_model, resumed_model)


def test_resume_without_a_checkpoint_starts_fresh_and_rejects_another_model(tmp_path, straight_run):
    straight_model, _ = straight_run
    path = tmp_path / "ckpt.pt"
    fresh = tiny_model(seed=0)
    result = train(fresh, TRAIN_DATA, VAL_DATA, tiny_config(), checkpoint_path=path, resume=True, progress=False)
    assert result.history["steps"][0] == 0
    assert_same_weights(straight_model, fresh)
    wider = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(ValueError, match="different model"):
        train(wider, TRAIN_DATA, VAL_DATA, tiny_config(), checkpoint_path=path, resume=True, progress=False)


# ---------------------------------------------------------------------------------------------- time budget


def test_time_budget_schedule_warms_up_in_steps_and_decays_over_the_seconds():
    cfg = TrainConfig(max_steps=10**9, max_seconds=100.0, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    warmup = [lr_at(step, cfg, elapsed=0.1 * step) for step in range(10)]  # a fast machine: 10 steps in 1 s
    assert all(b > a for a, b in zip(warmup, warmup[1:])) and warmup[-1] == pytest.approx(cfg.learning_rate)
    assert lr_at(10, cfg, elapsed=0.0) == pytest.approx(cfg.learning_rate)
    assert lr_at(10, cfg, elapsed=50.0) == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2)
    assert lr_at(20, cfg, elapsed=30.0) == lr_at(20_000, cfg, elapsed=30.0), "after warm-up only time counts"
    decay = [lr_at(50, cfg, elapsed=float(t)) for t in range(101)]
    assert all(b < a for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(cfg.min_lr)
    assert lr_at(50, cfg, elapsed=150.0) == cfg.min_lr, "past the budget the rate stays at its floor"


def test_time_budget_warm_up_takes_at_most_its_share_of_the_budget():
    """On a slow machine the warm-up ends by the clock: 100 steps must not eat half of a short budget."""
    cfg = TrainConfig(max_steps=10**9, max_seconds=120.0, warmup_steps=100, learning_rate=1e-3, min_lr=1e-4)
    share = WARMUP_SHARE * cfg.max_seconds
    assert lr_at(5, cfg, elapsed=share / 2) == pytest.approx(cfg.learning_rate / 2), "half the share: half the rate"
    assert lr_at(5, cfg, elapsed=share / 4) == pytest.approx(cfg.learning_rate / 4)
    assert lr_at(5, cfg, elapsed=share + 1) == lr_at(10_000, cfg, elapsed=share + 1), "then the cosine"
    assert 0.99 * cfg.learning_rate < lr_at(5, cfg, elapsed=share + 1) < cfg.learning_rate
    assert lr_at(50, cfg, elapsed=0.5) == pytest.approx(cfg.learning_rate * 51 / 100), "steps still count"
    untimed = replace(cfg, max_seconds=None, max_steps=1000)
    assert lr_at(5, untimed, elapsed=1e6) == pytest.approx(cfg.learning_rate * 6 / 100), "without a budget: steps"


class SteadyClock:
    """A clock that moves on 0.1 s each time it is read: a time budget becomes the same steps on any machine."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.1
        return self.now


@pytest.fixture
def steady_clock(monkeypatch):
    monkeypatch.setattr(training, "clock", SteadyClock())


def test_time_budget_run_ends_annealed_when_time_is_up(steady_clock):
    cfg = tiny_config(max_steps=10**9, max_seconds=3.0, warmup_steps=2, eval_interval=6, lr_decay_steps=None)
    result = train(tiny_model(), TRAIN_DATA, VAL_DATA, cfg, progress=False)
    history = result.history
    assert result.stop_reason == "max_seconds" and result.steps > 10
    assert len(history["seconds"]) == len(history["steps"]) >= 3
    assert all(b > a for a, b in zip(history["seconds"], history["seconds"][1:]))
    assert history["seconds"][-1] >= cfg.max_seconds and history["seconds"][-2] < cfg.max_seconds
    assert history["lr"][-1] == cfg.min_lr, "the last evaluation sees the rate at its floor"
    middle = history["lr"][1:-1]
    assert middle and all(cfg.min_lr < lr < cfg.learning_rate for lr in middle)
    assert all(b < a for a, b in zip(middle, middle[1:])), "the rate falls as the seconds pass"


def test_interrupted_time_budget_run_resumes_its_schedule(tmp_path, steady_clock):
    path = tmp_path / "ckpt.pt"
    cfg = tiny_config(max_steps=10**9, max_seconds=4.0, warmup_steps=2, eval_interval=5, lr_decay_steps=None)

    def interrupt_after_a_second(step, metrics):
        if step > 0 and load_checkpoint(path, device="cpu").history["seconds"][-1] >= 1.0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_model(),
            TRAIN_DATA,
            VAL_DATA,
            cfg,
            checkpoint_path=path,
            progress=False,
            callback=interrupt_after_a_second,
        )
    saved = load_checkpoint(path, device="cpu").history
    assert 1.0 <= saved["seconds"][-1] < cfg.max_seconds
    result = train(tiny_model(seed=5), TRAIN_DATA, VAL_DATA, cfg, checkpoint_path=path, resume=True, progress=False)
    history = result.history
    assert history["steps"][: len(saved["steps"])] == saved["steps"], "the resumed run extends the saved history"
    resumed_seconds = history["seconds"][len(saved["seconds"]) :]
    assert resumed_seconds and resumed_seconds[0] > saved["seconds"][-1], "the clock continues, not restarts"
    assert result.seconds < cfg.max_seconds - saved["seconds"][-1] + 1.0, "only the time left is spent"
    assert result.stop_reason == "max_seconds" and history["lr"][-1] == cfg.min_lr
    finished = train(tiny_model(), TRAIN_DATA, VAL_DATA, cfg, checkpoint_path=path, resume=True, progress=False)
    assert finished.steps == result.steps, "a finished time-budget run is not trained further"


# ---------------------------------------------------------------------------------------------- precision, compile


def test_precision_follows_what_the_hardware_computes_natively():
    assert choose_precision("cuda", cuda_capability=(9, 0)) == "bf16"  # H100
    assert choose_precision("cuda", cuda_capability=(8, 0)) == "bf16"  # A100
    assert choose_precision("cuda", cuda_capability=(7, 5)) == "fp16"  # T4: bf16 only emulated
    assert choose_precision("cuda", cuda_capability=(7, 0)) == "fp16"  # V100
    assert choose_precision("cuda", cuda_capability=(6, 1)) == "fp32"  # no tensor cores
    assert choose_precision("cpu", cpu_has_bf16=True) == "bf16"
    assert choose_precision("cpu", cpu_has_bf16=False) == "fp32"
    assert choose_precision("mps") == "fp32"
    flags = open("/proc/cpuinfo").read().split() if sys.platform.startswith("linux") else []
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert choose_precision("cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert device_precision("cpu", enabled=False) == "fp32"


def test_ds9_precision_overrides_the_devices_choice_but_not_a_run_without_autocast(monkeypatch):
    for value, expected in (("bf16", "bf16"), ("FP32", "fp32"), (" fp16 ", "fp16")):
        monkeypatch.setenv("DS9_PRECISION", value)
        assert device_precision("cpu") == expected
        assert device_precision("cpu", enabled=False) == "fp32"
    monkeypatch.setenv("DS9_PRECISION", "")
    assert device_precision("cpu") == choose_precision("cpu")
    monkeypatch.setenv("DS9_PRECISION", "half")
    with pytest.raises(ValueError, match="DS9_PRECISION='half' is not a number format: set it to one of bf16"):
        device_precision("cpu")


def test_only_float16_scales_the_loss():
    assert grad_scaler("cpu", "fp16").is_enabled()
    assert not grad_scaler("cpu", "bf16").is_enabled() and not grad_scaler("cpu", "fp32").is_enabled()
    with pytest.raises(ValueError, match="choose one of"):
        autocast("cpu", "fp8")


def test_bf16_autocast_gives_a_finite_loss_close_to_float32():
    model = tiny_model(dropout=0.0)
    x, y = get_batch(TRAIN_DATA, 8, 8, torch.Generator().manual_seed(0))
    _, full = model(x, y)
    with autocast("cpu", "bf16"):
        logits, reduced = model(x, y)
    assert logits.dtype == torch.bfloat16, "the matrix multiplies really ran in bfloat16"
    assert torch.isfinite(reduced) and reduced.item() == pytest.approx(full.item(), abs=0.05)
    reduced.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compile_choice_env_first_then_config_then_only_big_models_on_cuda(monkeypatch):
    monkeypatch.delenv("DS9_COMPILE", raising=False)
    tiny, big = tiny_model(), torch.nn.Linear(2400, 2400)  # 16 thousand and 5.8 million parameters
    assert not should_compile("cpu", big) and not should_compile("cuda", tiny) and should_compile("cuda", big)
    assert should_compile("cpu", tiny, requested=True) and not should_compile("cuda", big, requested=False)
    monkeypatch.setenv("DS9_COMPILE", "0")
    assert not should_compile("cuda", big, requested=True)
    monkeypatch.setenv("DS9_COMPILE", "1")
    assert should_compile("cpu", tiny)


def test_token_ids_outside_the_vocabulary_stop_training_before_the_first_step(tmp_path):
    """A compiled step does not check its batches, so train() checks the data once, up front, and says which."""
    bad_train = torch.cat([TRAIN_DATA, torch.tensor([TOKENIZER.vocab_size + 3])])
    checkpoint = tmp_path / "run.pt"
    for train_data, val_data, name in ((bad_train, VAL_DATA, "train_data"), (TRAIN_DATA, -VAL_DATA - 1, "val_data")):
        with pytest.raises(ValueError, match=rf"^{name}'s token ids must be in 0\.\.{TOKENIZER.vocab_size - 1} "):
            train(tiny_model(), train_data, val_data, tiny_config(max_steps=2), checkpoint_path=checkpoint)
    assert not checkpoint.exists(), "nothing was trained or written"


@pytest.mark.skipif(not hasattr(torch.compiler, "is_compiling"), reason="PyTorch 2.3 or later tells when it compiles")
def test_the_compiled_model_is_one_graph():
    """No graph break: the token check that reads numbers back is left out while compiling."""
    model = tiny_model(dropout=0.0)
    x, y = get_batch(TRAIN_DATA, model.config.block_size, 4, torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(model)(x, y)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    with pytest.raises(ValueError, match="Token ids must be in"):  # eager calls still check
        model(x + TOKENIZER.vocab_size)


def test_a_model_that_fails_to_compile_trains_without_compiling(monkeypatch):
    """A compiler that fails (no C++ compiler, no Triton...) costs a warning, never the run."""
    real_compile = torch.compile

    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", lambda module: real_compile(module, backend=failing_backend))
    cfg = tiny_config(max_steps=6, compile=True)
    compiled = tiny_model(dropout=0.0)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        result = train(compiled, TRAIN_DATA, VAL_DATA, cfg, progress=False)
    assert result.steps == 6 and math.isfinite(result.val_loss)
    eager = tiny_model(dropout=0.0)
    train(eager, TRAIN_DATA, VAL_DATA, replace(cfg, compile=False), progress=False)
    assert_same_weights(eager, compiled)
