"""Chapter 04's exercises: where in a word context helps, whether more text moves the wall, mixing two models,
one step of Witten-Bell backoff."""

from __future__ import annotations

import random

import numpy as np
import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register, with_typical_mistake
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


def witten_bell(counts: np.ndarray, lower: np.ndarray) -> np.ndarray:
    # counts[c]: how often c followed this context in training; lower: the shorter context's distribution.
    total = counts.sum()
    if total == 0:
        return lower.copy()  # a context never seen: all of the shorter context's estimate
    types = np.count_nonzero(counts)  # T(h): how many different tokens followed it
    return (counts + types * lower) / (total + types)


def _witten_bell_all_counts(counts, lower):
    """A typical mistake: weighting the shorter context by the number of times the context was seen."""
    total = counts.sum()
    return lower.copy() if total == 0 else (counts + total * lower) / (2 * total)


def _witten_bell_no_lower(counts, lower):
    """A typical mistake: the counts alone, so a token never seen after this context gets probability 0."""
    total = counts.sum()
    return lower.copy() if total == 0 else counts / total


def _backoff_cases():
    """(what, counts after a context, the shorter context's distribution, what NGramModel says) on a small text."""
    text = np.array([0, 1, 2, 0, 1, 3, 0, 1, 2, 2, 4, 0, 3, 1, 2, 0, 1, 4, 4, 2])
    vocab = 6  # token 5 never occurs
    model = NGramModel(2, vocab, smoothing="backoff").fit(text)
    unigram = model.lower_order(1).next_token_probs([])
    cases = []
    for h in (0, 1, 2, 5):
        counts = np.bincount(text[1:][text[:-1] == h], minlength=vocab).astype(float)
        cases.append(
            (f"the context {h} (seen {int(counts.sum())} times)", counts, unigram, model.next_token_probs([h]))
        )
    return cases


def _check_witten_bell(answer) -> list[str]:
    for what, counts, lower, expected in _backoff_cases():
        got = answer(counts.copy(), lower.copy())
        got_tensor = torch.as_tensor(np.asarray(got, dtype=float)) if got is not None else None
        problem = close_problem(f"witten_bell for {what}", got_tensor, torch.as_tensor(expected))
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got_tensor,
                (
                    (
                        _witten_bell_all_counts,
                        "you weighted the shorter context by how often the context was seen; Witten-Bell weights it by "
                        "T(h), the number of *different* tokens that followed it (np.count_nonzero(counts))",
                    ),
                    (
                        _witten_bell_no_lower,
                        "you used the counts alone: mix in the shorter context, (counts + T * lower) / (total + T), so "
                        "that a token never seen after this context keeps some probability",
                    ),
                ),
                (counts, lower),
            )
        ]
    return []


register(
    Exercise(
        id="04.4",
        title="One step of backoff",
        builds="one step of Witten-Bell backoff",
        check=_check_witten_bell,
        solution=witten_bell,
        verified="the same distribution as NGramModel(2, ..., smoothing='backoff') after seen and unseen contexts",
    )
)
