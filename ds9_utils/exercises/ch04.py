"""Chapter 04's exercises: where in a word context helps, whether more text moves the wall, mixing two models."""

from __future__ import annotations

import random

import numpy as np

from ds9_utils.exercises import Exercise, equal_problem, number_problem, register
from ds9_utils.ngram import NGramModel


def position_in_word(text: str) -> list[int]:
    # 0 for the first letter of a word, 1 for the second, ...; -1 for anything that is not a letter.
    positions = []
    for i, ch in enumerate(text):
        if not ch.isalpha():
            positions.append(-1)
        else:
            positions.append(positions[-1] + 1 if i > 0 and text[i - 1].isalpha() else 0)
    return positions


def _check_position_in_word(answer) -> list[str]:
    rng = random.Random(0)
    cases = ["ODO: I will be watching you, Quark.\n", "", "a", "O'BRIEN: Ah.", "  Kira"]
    cases += ["".join(rng.choice("ab :'\n") for _ in range(30)) for _ in range(20)]
    for text in cases:
        if problem := equal_problem(f"position_in_word({text!r})", answer(text), position_in_word(text)):
            return [problem]
    return []


register(
    Exercise(
        id="04.1",
        title="Where in a word does context help?",
        check=_check_position_in_word,
        solution=position_in_word,
        verified="numbers the letters of every word from 0 and marks the rest -1, on 25 texts",
    )
)


def best_context_length(train_ids, val_ids, vocab_size: int, ns: list[int]) -> int:
    # Fit the longest backoff model once; its lower orders are the shorter models.
    model = NGramModel(max(ns), vocab_size, "backoff").fit(train_ids)
    losses = [model.lower_order(n).loss(val_ids) for n in ns]
    return ns[int(np.argmin(losses))]


def _repetitive_ids(length: int, seed: int) -> np.ndarray:
    """Ids from a made-up language in which the next id depends on the two before, plus a little noise."""
    rng = np.random.default_rng(seed)
    ids = [0, 1]
    for _ in range(length - 2):
        ids.append(int(rng.integers(0, 6)) if rng.random() < 0.1 else (ids[-1] + 2 * ids[-2]) % 6)
    return np.array(ids)


def _check_best_context_length(answer) -> list[str]:
    found = []
    for train_length in (300, 30_000):
        train_ids, val_ids = _repetitive_ids(train_length, 1), _repetitive_ids(2_000, 2)
        expected = best_context_length(train_ids, val_ids, 6, [1, 2, 3, 4, 5, 6])
        got = answer(train_ids, val_ids, 6, [1, 2, 3, 4, 5, 6])
        found.append(equal_problem(f"best_context_length with {train_length:,} training ids", got, expected))
    return [problem for problem in found if problem]


register(
    Exercise(
        id="04.2",
        title="Does more text move the wall?",
        check=_check_best_context_length,
        solution=best_context_length,
        verified="picks the backoff model's best n for a little and for a lot of text of a made-up language",
    )
)


def mixture_loss(p_long: np.ndarray, p_short: np.ndarray, weight: float) -> float:
    # Mean loss in nats of P = weight * P_long + (1 - weight) * P_short, one probability per character.
    return float(-np.log(weight * p_long + (1 - weight) * p_short).mean())


def _check_mixture_loss(answer) -> list[str]:
    rng = np.random.default_rng(0)
    p_long, p_short = rng.uniform(0.001, 1, 500), rng.uniform(0.01, 0.5, 500)
    p_long[:50] = 0.0  # contexts the long model never saw: only the mixture can score them
    found = [
        number_problem(
            "mixture_loss of two constant models", answer(np.full(3, 0.5), np.full(3, 0.25), 0.5), -np.log(0.375)
        )
    ]
    for weight in (0.0, 0.3, 0.9):
        found.append(
            number_problem(
                f"mixture_loss(random p_long, random p_short, {weight})",
                answer(p_long, p_short, weight),
                mixture_loss(p_long, p_short, weight),
            )
        )
    return [problem for problem in found if problem]


register(
    Exercise(
        id="04.3",
        title="Backoff by hand",
        check=_check_mixture_loss,
        solution=mixture_loss,
        verified="gives the loss in nats of the mixture for a known pair of models and for random ones",
    )
)
