"""Chapter 03's exercises: add-k smoothing, the loss from the counts alone, the entropy of each row, and the
whole bigram table built from the characters."""

from __future__ import annotations

import math

import numpy as np
import torch

from ds9_utils.exercises import Exercise, close_problem, register, with_typical_mistake
from ds9_utils.ngram import NGramModel


def _random_counts(seed: int, size: int = 6) -> torch.Tensor:
    """A bigram count table with some pairs never seen (zeros) and one character never seen at all."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 20, (size, size), generator=generator)
    counts[torch.rand(size, size, generator=generator) < 0.3] = 0
    counts[-1] = 0
    return counts


def add_k_probabilities(counts: torch.Tensor, k: float) -> torch.Tensor:
    # Pretend every pair was seen k more times, then make each row sum to 1.
    smoothed = counts.double() + k
    return smoothed / smoothed.sum(dim=1, keepdim=True)


def _check_add_k_probabilities(answer) -> list[str]:
    for seed in range(5):
        counts = _random_counts(seed)
        for k in (0.01, 1.0, 100.0):
            expected = add_k_probabilities(counts, k)
            if problem := close_problem(f"add_k_probabilities(counts #{seed}, k={k})", answer(counts, k), expected):
                return [problem]
    return []


register(
    Exercise(
        id="03.1",
        title="How much smoothing?",
        check=_check_add_k_probabilities,
        solution=add_k_probabilities,
        verified="matches add-k smoothing on 5 random count tables for k = 0.01, 1 and 100",
    )
)


def table_loss(log_probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # Every pair (a, b) contributes -log P[a, b] once per occurrence; a pair never seen contributes nothing,
    # even where its log-probability is -inf (0 * -inf is nan, so it is set to 0 explicitly).
    return -(counts * log_probs).nan_to_num(0.0).sum() / counts.sum()


def _check_table_loss(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (400,), generator=generator)
    counts = torch.zeros(6, 6, dtype=torch.long)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(399, dtype=torch.long), accumulate=True)
    logits = torch.randn(6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    log_probs = torch.log_softmax(logits, dim=1)
    pair_by_pair = -log_probs[ids[:-1], ids[1:]].mean()
    got = answer(log_probs, counts)
    if problem := close_problem("table_loss(log_probs, counts) of 400 random ids", got, pair_by_pair.detach()):
        return [problem + " (expected the mean loss of the 399 pairs, one by one)"]
    if not got.requires_grad:
        return ["table_loss's result has no gradient: compute it from log_probs with torch operations"]
    exact = torch.log(counts.double() / counts.sum(dim=1, keepdim=True))  # -inf where a pair was never seen
    problem = close_problem(
        "table_loss(log of the counted probabilities, counts)", answer(exact, counts), table_loss(exact, counts)
    )
    return [problem + " (a pair never seen has log P = -inf and count 0: it must add nothing)"] if problem else []


register(
    Exercise(
        id="03.2",
        title="A whole pass over the data in one line",
        check=_check_table_loss,
        solution=table_loss,
        verified="equals the pair-by-pair loss of 400 random characters, keeps the gradient, and ignores pairs "
        "never seen",
    )
)


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    # -sum P log2 P over each row, in bits; 0 * log 0 counts as 0 (the + 0.0 turns -0.0 into 0.0).
    return -(probs * probs.log2()).nan_to_num(0.0).sum(dim=1) + 0.0


def _check_row_entropy(answer) -> list[str]:
    size = 8
    known = torch.stack([torch.full((size,), 1 / size), torch.eye(size)[2], torch.tensor([0.5, 0.5] + [0.0] * 6)])
    found = [
        close_problem(
            "row_entropy of [uniform row, one certain character, a coin toss]",
            answer(known),
            torch.tensor([math.log2(size), 0.0, 1.0], dtype=torch.float64),
        )
    ]
    for seed in range(3):
        probs = add_k_probabilities(_random_counts(seed), 0.0).nan_to_num(1 / 6)
        found.append(close_problem(f"row_entropy(random table #{seed})", answer(probs), row_entropy(probs)))
    return [problem for problem in found if problem]


register(
    Exercise(
        id="03.3",
        title="Where is the bigram model sure, and where lost?",
        check=_check_row_entropy,
        solution=row_entropy,
        verified="gives log2(8) bits for a uniform row, 0 for a certain one (no nan), 1 for a coin toss, and the "
        "entropy of random tables with zeros",
    )
)


def bigram_table(ids: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    # counts[a, b]: how often character b came right after character a (row: the previous one).
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    smoothed = counts + k  # every pair seen k more times, so that none has probability 0
    return smoothed / smoothed.sum(dim=1, keepdim=True)  # each row: P(next | previous), summing to 1


def _table_transposed(ids, vocab_size, k):
    """A typical mistake: counting (next, previous) instead of (previous, next)."""
    return bigram_table(ids.flip(0), vocab_size, k)


def _table_joint(ids, vocab_size, k):
    """A typical mistake: dividing by the total of the whole table (P(a, b)) instead of each row's (P(b | a))."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    return (counts + k) / (counts + k).sum()


def _check_bigram_table(answer) -> list[str]:
    generator = torch.Generator().manual_seed(3)
    for length, vocab_size, k in [(300, 6, 1.0), (50, 8, 0.5), (1000, 5, 0.01)]:
        ids = torch.randint(0, vocab_size - 1, (length,), generator=generator)  # the last character never occurs
        library = NGramModel(2, vocab_size, smoothing=k).fit(ids.numpy())
        expected = torch.as_tensor(np.stack([library.next_token_probs([a]) for a in range(vocab_size)]))
        got = answer(ids.clone(), vocab_size, k)
        what = f"bigram_table of {length} random ids, vocab_size={vocab_size}, k={k}"
        problem = close_problem(what, got, expected, atol=1e-6, rtol=1e-5)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (
                        _table_transposed,
                        "your rows are the *next* character; row a must count what followed a: ids[:-1] "
                        "are the rows, ids[1:] the columns",
                    ),
                    (
                        _table_joint,
                        "you divided by the whole table's total, which gives P(a and b); divide each row by "
                        "its own total, so that row a is P(next | a) and sums to 1",
                    ),
                ),
                (ids, vocab_size, k),
            )
        ]
    return []


register(
    Exercise(
        id="03.4",
        title="The bigram table, from the characters",
        builds="the bigram table from the characters",
        check=_check_bigram_table,
        solution=bigram_table,
        verified="the same next-character probabilities as ds9_utils.ngram.NGramModel(2, ..., smoothing=k)",
    )
)
