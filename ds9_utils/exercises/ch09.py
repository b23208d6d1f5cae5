"""Chapter 09's exercises: early stopping, the learning-rate schedules (cosine and wsd), what bits per character
mean, rotary positions and Muon's Newton-Schulz iteration."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ds9_utils.exercises import Exercise, close_problem, number_problem, register, with_typical_mistake
from ds9_utils.model import rotary_angles
from ds9_utils.model import rotate as _library_rotate
from ds9_utils.optim import orthogonalize as _library_orthogonalize
from ds9_utils.train import lr_at
from ds9_utils.train_config import TrainConfig


def stop_when_stuck(patience: int = 3):
    # A callback with a memory: the best validation loss so far, and how many evaluations since it improved.
    best, waited = float("inf"), 0

    def callback(step, metrics):
        nonlocal best, waited
        if metrics["val_loss"] < best:
            best, waited = metrics["val_loss"], 0
        else:
            waited += 1
        return waited >= patience

    return callback


def _decisions(callback, val_losses: list[float]) -> list[bool]:
    """What a callback answers after each evaluation of a run with these validation losses."""
    return [bool(callback(100 * (i + 1), {"train_loss": 2.0, "val_loss": loss})) for i, loss in enumerate(val_losses)]


def _check_stop_when_stuck(answer) -> list[str]:
    runs = [
        ("a run that improves, then gets worse", 3, [3.0, 2.5, 2.6, 2.7, 2.8, 2.4]),
        ("a run that ties its best (a tie is no improvement)", 3, [2.0, 2.0, 2.0, 2.0]),
        ("a run that keeps improving", 3, [3.0, 2.9, 2.8, 2.7, 2.6]),
        ("a run that improves again just in time", 2, [3.0, 3.1, 2.9, 3.0, 3.2]),
    ]
    if not callable(answer(3)):
        return [f"stop_when_stuck(3) should return the callback function, got {answer(3)!r}"]
    for what, patience, losses in runs:
        expected = _decisions(stop_when_stuck(patience), losses)
        got = _decisions(answer(patience), losses)
        if got != expected:
            return [
                f"{what}, patience={patience}, validation losses {losses}: the callback should answer "
                f"{expected}, answered {got}"
            ]
    first, second = answer(3), answer(3)
    _decisions(first, [1.0, 2.0, 2.0])
    if _decisions(second, [3.0]) != [False]:
        return [
            "two callbacks made by stop_when_stuck share their memory: keep `best` and `waited` inside the "
            "function (nonlocal), not in global variables"
        ]
    return []


register(
    Exercise(
        id="09.1",
        title="Early stopping",
        check=_check_stop_when_stuck,
        solution=stop_when_stuck,
        verified="stops after `patience` evaluations without a new best validation loss, never earlier",
    )
)


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    # Warm-up: a straight line up to learning_rate over warmup_steps steps (step 0 already gets a little).
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    # Then half a cosine wave down to min_lr at max_steps, and min_lr after that.
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def _rate_warming_from_zero(step: int, cfg: TrainConfig) -> float:
    """A typical mistake: the warm-up starts at 0 (step / warmup_steps), so step 0 takes no step at all."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * step / cfg.warmup_steps
    return lr_at(step, cfg)


def _rate_decaying_to_zero(step: int, cfg: TrainConfig) -> float:
    """A typical mistake: the cosine goes down to 0 instead of to min_lr."""
    return lr_at(step, replace(cfg, min_lr=0.0))


def _check_schedule(answer, name: str, configs: list[TrainConfig], mistakes) -> list[str]:
    """Compare ``answer(step, cfg)`` with ``lr_at`` at every step of each config, two steps past the end; on the
    first difference, name the typical mistake (a function of ``(step, cfg)``, and its hint) the rates match."""
    for cfg in configs:
        steps = range(cfg.max_steps + 3)
        for step in steps:
            what = (
                f"{name}({step}, cfg) with warmup_steps={cfg.warmup_steps}, max_steps={cfg.max_steps}, "
                f"learning_rate={cfg.learning_rate:g}, min_lr={cfg.min_lr:g}"
                + (f", decay_share={cfg.decay_share:g}" if cfg.schedule == "wsd" else "")
            )
            problem = number_problem(what, answer(step, cfg), lr_at(step, cfg), rel=1e-6, abs_tol=1e-12)
            if problem is None:
                continue
            rates = [answer(s, cfg) for s in steps]
            if not all(isinstance(rate, (int, float)) and not isinstance(rate, bool) for rate in rates):
                return [problem]
            every_step = tuple(
                (lambda cfg, rate=rate: [rate(s, cfg) for s in range(cfg.max_steps + 3)], hint)
                for rate, hint in mistakes
            )
            rates = torch.tensor(rates, dtype=torch.float64)
            return [with_typical_mistake(problem, rates, every_step, (cfg,), rtol=1e-6, atol=1e-12)]
    return []


def _check_learning_rate_at(answer) -> list[str]:
    configs = [
        TrainConfig(max_steps=100, warmup_steps=10, learning_rate=3e-3, min_lr=3e-4),
        TrainConfig(max_steps=40, warmup_steps=0, learning_rate=3e-2, min_lr=3e-3),
        TrainConfig(max_steps=7, warmup_steps=3, learning_rate=1e-3, min_lr=0.0),
    ]
    mistakes = (
        (
            _rate_warming_from_zero,
            "your warm-up starts at 0; step 0 should already get learning_rate / warmup_steps: "
            "learning_rate * (step + 1) / warmup_steps",
        ),
        (_rate_decaying_to_zero, "your cosine ends at 0; it should end at min_lr"),
    )
    return _check_schedule(answer, "learning_rate_at", configs, mistakes)


register(
    Exercise(
        id="09.2",
        title="The schedule: warm-up, then cosine decay",
        builds="the learning-rate schedule",
        check=_check_learning_rate_at,
        solution=learning_rate_at,
        verified="the same learning rate as ds9_utils.train.lr_at at every step, with and without warm-up",
    )
)


def bits_summary(bits_per_char: float, n_characters: int) -> tuple[float, float]:
    # b bits per character: the right character gets, on average (geometric mean), a probability of 2^-b;
    # an ideal compressor driven by the model spends b bits, b / 8 bytes, on each character.
    return 2**-bits_per_char, n_characters * bits_per_char / 8


def _check_bits_summary(answer) -> list[str]:
    for bits, n_characters in [(1.0, 800), (1.6, 1_000_000), (4.5, 123)]:
        got = answer(bits, n_characters)
        if not isinstance(got, tuple) or len(got) != 2:
            return [f"bits_summary({bits}, {n_characters}) should return a tuple (probability, bytes), got {got!r}"]
        probability, n_bytes = bits_summary(bits, n_characters)
        problem = number_problem(f"the probability for {bits} bits per character", got[0], probability) or (
            number_problem(f"the bytes for {n_characters:,} characters at {bits} bits each", got[1], n_bytes)
        )
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="09.3",
        title="Bits and probabilities",
        check=_check_bits_summary,
        solution=bits_summary,
        verified="b bits per character = a probability of 2^-b for the right character, and b/8 bytes per character",
    )
)


def rotate(x, cos, sin):
    # Pair i of each row is (x[..., i], x[..., i + d/2]): the first half against the second half.
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep x's number format (bfloat16 under autocast)
    # Turn each pair (a, b) by its angle: (a cos - b sin, a sin + b cos).
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def _rotate_backwards(x, cos, sin):
    """A typical mistake: turning by minus the angle."""
    return _library_rotate(x, cos, -sin)


def _rotate_neighbours(x, cos, sin):
    """A typical mistake: pairing neighbours (x[2i], x[2i+1]) instead of the two halves."""
    even, odd = x[..., 0::2], x[..., 1::2]
    turned = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return turned.flatten(-2).to(x.dtype)


def _rotary_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(9)
    cases = []
    for shape in [(6, 8), (2, 3, 10, 16), (1, 1, 4, 2)]:
        *_, positions, head_size = shape
        cos, sin = rotary_angles(positions, head_size)
        cases.append((f"x of shape {shape}", torch.randn(shape, generator=generator), cos, sin))
    cos, sin = rotary_angles(5, 8)
    cases.append(("a bfloat16 x of shape (5, 8), as under autocast", torch.randn(5, 8).to(torch.bfloat16), cos, sin))
    return cases


def _check_rotate(answer) -> list[str]:
    for what, x, cos, sin in _rotary_cases():
        expected = _library_rotate(x, cos, sin)
        got = answer(x.clone(), cos, sin)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(expected.shape) and got.dtype != x.dtype:
            return [
                f"for {what}, your rotate returns {got.dtype}, expected {x.dtype} (the dtype of x): turn cos and sin "
                "into x's dtype first, `cos.to(x.dtype)`"
            ]
        problem = close_problem(f"rotate({what}, cos, sin)", got, expected, atol=1e-5, rtol=1e-4)
        if problem is None:
            continue
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return [problem]
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (
                        _rotate_backwards,
                        "you turned by minus the angle: pair (a, b) becomes (a cos - b sin, a sin + b cos)",
                    ),
                    (
                        _rotate_neighbours,
                        "you paired neighbours (x[2i], x[2i+1]); rotate pairs x[i] with x[i + d/2], the first half of "
                        "the numbers with the second half",
                    ),
                ),
                (x, cos, sin),
                atol=1e-5,
                rtol=1e-4,
            )
        ]
    return []


register(
    Exercise(
        id="09.4",
        title="Rotary positions",
        builds="rotary positions",
        check=_check_rotate,
        solution=rotate,
        verified="the same turned queries and keys as ds9_utils.model.rotate, at every position and pair",
    )
)


def orthogonalize(matrix):
    a, b, c = 3.4445, -4.7750, 2.0315
    # Work on the wide side (fewer rows than columns), so that A = X X^T is the smaller square.
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.T if tall else matrix
    x = x / x.norm()  # every singular value is now at most 1
    for _ in range(5):  # each step maps every singular value s to a s + b s^3 + c s^5, closer to 1
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def _check_orthogonalize(answer) -> list[str]:
    generator = torch.Generator().manual_seed(5)
    for shape in [(8, 24), (16, 16), (24, 8), (3, 40)]:
        matrix = torch.randn(shape, generator=generator) * torch.logspace(0, -2, shape[1])
        what = f"orthogonalize of a {shape[0]} x {shape[1]} matrix"
        expected = _library_orthogonalize(matrix)
        got = answer(matrix.clone())
        problem = close_problem(what, got, expected, atol=1e-3, rtol=1e-3)
        if problem is None:
            continue
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return [problem]
        got = got.detach().float()
        if not torch.isfinite(got).all() or got.norm() > 100 * expected.norm():
            return [f"{what} grows without bound: divide the matrix by its norm before the steps ({problem})"]
        for steps in range(1, 11):
            if steps != 5 and torch.allclose(got, _library_orthogonalize(matrix, steps=steps), atol=1e-3, rtol=1e-3):
                return [f"{what}: you ran {steps} Newton-Schulz steps; take 5 ({problem})"]
        return [problem]
    return []


register(
    Exercise(
        id="09.5",
        title="Newton-Schulz: Muon's orthogonalisation",
        builds="Muon's Newton-Schulz orthogonalisation",
        check=_check_orthogonalize,
        solution=orthogonalize,
        verified="the same nearly orthogonal matrix as ds9_utils.optim.orthogonalize, wide, square and tall",
    )
)


def wsd_rate(step: int, cfg: TrainConfig) -> float:
    # Warm-up as in 09.2. Then the full rate (stable) until the last decay_share of the steps after the warm-up,
    # then a straight line down to min_lr at max_steps, and min_lr after that.
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    remaining = min((1.0 - progress) / cfg.decay_share, 1.0)  # 1 while stable, then down to 0
    return cfg.min_lr + remaining * (cfg.learning_rate - cfg.min_lr)


def _wsd_decaying_all_the_way(step: int, cfg: TrainConfig) -> float:
    """A typical mistake: no stable stretch, the rate falls in a straight line from the end of the warm-up."""
    return lr_at(step, replace(cfg, decay_share=1.0))


def _wsd_share_read_as_stable(step: int, cfg: TrainConfig) -> float:
    """A typical mistake: decay_share taken as the stable share, so the decay takes the other 1 - decay_share."""
    return lr_at(step, replace(cfg, decay_share=1.0 - cfg.decay_share))


def _check_wsd_rate(answer) -> list[str]:
    configs = [
        TrainConfig(max_steps=100, warmup_steps=10, learning_rate=3e-3, min_lr=3e-4, schedule="wsd", decay_share=0.4),
        TrainConfig(max_steps=50, warmup_steps=0, learning_rate=2e-2, min_lr=2e-3, schedule="wsd", decay_share=0.2),
        TrainConfig(max_steps=9, warmup_steps=3, learning_rate=1e-3, min_lr=0.0, schedule="wsd", decay_share=0.5),
    ]
    mistakes = (
        (
            _wsd_decaying_all_the_way,
            "your rate falls from the end of the warm-up; it should stay at learning_rate "
            "until only decay_share of the steps after the warm-up are left",
        ),
        (
            _wsd_share_read_as_stable,
            "your decay takes 1 - decay_share of the run; decay_share is the share of "
            "the steps after the warm-up that the decay takes, the last ones",
        ),
    )
    return _check_schedule(answer, "wsd_rate", configs, mistakes)


register(
    Exercise(
        id="09.6",
        title="The schedule of the speedruns: warm-up, stable, decay",
        builds="the wsd learning-rate schedule",
        check=_check_wsd_rate,
        solution=wsd_rate,
        verified="the same learning rate as ds9_utils.train.lr_at with schedule='wsd', for three decay shares",
    )
)
