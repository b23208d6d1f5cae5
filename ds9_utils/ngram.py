"""Count-based n-gram language models: predict the next token from the ``n - 1`` tokens before it, by counting.

An n-gram model is a lookup table. To predict what follows "Capta", a 6-gram model looks up every time
"Capta" appeared in the training text and counts what came next. It has no parameters to train, only counts,
and it cannot say anything about a context it never saw: that is what notebook 04 measures, and why the
course moves on to attention.

Two ways to give an unseen pair a probability above zero (``smoothing``):

- a number ``k`` (**add-k**, "Laplace" smoothing for ``k = 1``): pretend every token followed every context
  ``k`` more times than it did, ``P(c | h) = (count(h, c) + k) / (count(h) + k * V)``. A context never seen
  in training gets the uniform distribution ``1 / V``. ``k = 0`` is the raw maximum-likelihood estimate: an
  unseen pair then has probability 0 and an infinite loss.
- ``"backoff"`` (interpolated **Witten-Bell** smoothing): mix the n-gram estimate with the (n-1)-gram
  estimate, recursively down to the uniform distribution,
  ``P_n(c | h) = (count(h, c) + T(h) * P_{n-1}(c | h')) / (count(h) + T(h))``, where ``h'`` drops the
  oldest token of ``h`` and ``T(h)`` is the number of distinct tokens seen after ``h``. A context seen
  often, with few distinct continuations, trusts its own counts; an unseen one falls back entirely on the
  shorter context.

Positions near the start of a text have fewer than ``n - 1`` tokens before them; they are predicted from the
context they have (the highest order available). The loss is the mean negative log-likelihood in nats of
``tokens[1:]``, each given what precedes it, like the cross-entropy of the neural models.

Implementation: an n-gram of token ids is packed into one integer, ``((t0 * V + t1) * V + t2) ...``, and the
counts of every order 1..n are kept as sorted arrays of those integers, so fitting is a few ``np.unique``
calls and looking up a whole validation text is one ``np.searchsorted`` per order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_INT64_BITS = 63


def _as_tokens(tokens: Any, vocab_size: int, name: str = "tokens") -> np.ndarray:
    """Token ids as a 1-D int64 array, checked to lie in ``0..vocab_size - 1``."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    array = np.asarray(tokens, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {array.shape}.")
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"{name} holds ids outside 0..{vocab_size - 1}: was it encoded with another tokenizer?")
    return array


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values[i]`` where ``keys[i] == query`` for each query (``keys`` sorted), and 0 where it is absent."""
    if keys.size == 0:
        return np.zeros(queries.shape, dtype=values.dtype)
    where = np.searchsorted(keys, queries)
    where = np.minimum(where, keys.size - 1)
    return np.where(keys[where] == queries, values[where], 0)


class _OrderCounts:
    """The counts of one order m: every m-gram seen, and every (m-1)-token context with its total and how many
    distinct tokens followed it."""

    def __init__(self, codes: np.ndarray, vocab_size: int):
        self.ngram_keys, self.ngram_counts = np.unique(codes, return_counts=True)
        contexts = self.ngram_keys // vocab_size  # still sorted: floor division keeps the order
        self.context_keys, starts = np.unique(contexts, return_index=True)
        self.context_totals = np.add.reduceat(self.ngram_counts, starts) if starts.size else starts
        self.context_types = np.diff(np.append(starts, self.ngram_keys.size))


class NGramModel:
    """An n-gram language model over ``vocab_size`` token ids: ``fit(tokens)``, then ``loss``, ``log_prob``,
    ``next_token_probs`` and ``sample``.

    n: how many tokens an n-gram spans; the model predicts from the ``n - 1`` tokens before (n=1: no context,
        only how frequent each token is; n=2: the bigram model).
    smoothing: a number ``k >= 0`` for add-k smoothing, or ``"backoff"`` for interpolated Witten-Bell backoff
        (see the module docstring).
    """

    def __init__(self, n: int, vocab_size: int, smoothing: float | str = 1.0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}.")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a whole number >= 1, got {vocab_size!r}.")
        if n * math.log2(max(vocab_size, 2)) > _INT64_BITS:
            raise ValueError(
                f"n={n} is too long for a vocabulary of {vocab_size}: an n-gram must fit in 63 bits, "
                f"so n can be at most {int(_INT64_BITS // math.log2(max(vocab_size, 2)))}."
            )
        if isinstance(smoothing, str):
            if smoothing != "backoff":
                raise ValueError(f"smoothing must be a number k >= 0 (add-k) or 'backoff', got {smoothing!r}.")
        elif (
            isinstance(smoothing, bool)
            or not isinstance(smoothing, (int, float))
            or not smoothing >= 0
            or not math.isfinite(smoothing)
        ):
            raise ValueError(f"smoothing must be a number k >= 0 (add-k) or 'backoff', got {smoothing!r}.")
        self.n = n
        self.vocab_size = vocab_size
        self.smoothing = smoothing
        self._orders: list[_OrderCounts] | None = None  # index m - 1 holds the counts of order m

    def __repr__(self) -> str:
        state = f"{self.num_contexts:,} contexts seen" if self.is_fitted else "not fitted"
        return f"NGramModel(n={self.n}, vocab_size={self.vocab_size}, smoothing={self.smoothing!r}; {state})"

    # ------------------------------------------------------------------------------------------ counting

    def _codes(self, tokens: np.ndarray, m: int) -> np.ndarray:
        """The m-grams of ``tokens`` as integers, one for each position ``i >= m - 1`` (the m-gram ending at i)."""
        count = tokens.size - m + 1
        codes = np.zeros(max(count, 0), dtype=np.int64)
        for j in range(m):
            codes = codes * self.vocab_size + tokens[j : j + count]
        return codes

    def fit(self, tokens: Any) -> NGramModel:
        """Count every m-gram of ``tokens`` for m = 1..n (replacing earlier counts); returns the model."""
        tokens = _as_tokens(tokens, self.vocab_size)
        if tokens.size == 0:
            raise ValueError("Cannot fit an n-gram model on an empty text.")
        self._orders = [_OrderCounts(self._codes(tokens, m), self.vocab_size) for m in range(1, self.n + 1)]
        return self

    def lower_order(self, n: int, smoothing: float | str | None = None) -> NGramModel:
        """The same counts used as a model of order ``n`` (at most this model's n), without counting again.

        Fitting the 7-gram model counts every order from 1 to 7, so the 1- to 6-gram models come for free:
        ``[big.lower_order(n) for n in range(1, 8)]``. ``smoothing`` defaults to this model's."""
        orders = self._require_fitted()
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.n:
            raise ValueError(f"n must be a whole number from 1 to this model's n ({self.n}), got {n!r}.")
        model = NGramModel(n, self.vocab_size, self.smoothing if smoothing is None else smoothing)
        model._orders = orders[:n]
        return model

    @property
    def is_fitted(self) -> bool:
        return self._orders is not None

    def _require_fitted(self) -> list[_OrderCounts]:
        if self._orders is None:
            raise RuntimeError("This NGramModel has not seen any text yet: call fit(train_tokens) first.")
        return self._orders

    @property
    def num_contexts(self) -> int:
        """How many distinct contexts of n - 1 tokens the training text holds (1 for n = 1: the empty one)."""
        return int(self._require_fitted()[-1].context_keys.size)

    @property
    def num_ngrams(self) -> int:
        """How many distinct n-grams the training text holds: the number of non-zero entries of the table."""
        return int(self._require_fitted()[-1].ngram_keys.size)

    # ------------------------------------------------------------------------------------------ probabilities

    def _update(self, m: int, context_codes: np.ndarray, next_tokens: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """Probabilities of ``next_tokens`` after contexts of order m, given the order m-1 estimate ``lower``."""
        counts = self._require_fitted()[m - 1]
        pair = _lookup(counts.ngram_keys, counts.ngram_counts, context_codes * self.vocab_size + next_tokens)
        total = _lookup(counts.context_keys, counts.context_totals, context_codes)
        if self.smoothing == "backoff":
            types = _lookup(counts.context_keys, counts.context_types, context_codes)
            seen = total > 0
            mixed = (pair + types * lower) / np.where(seen, total + types, 1)
            return np.where(seen, mixed, lower)
        k = float(self.smoothing)
        with np.errstate(divide="ignore", invalid="ignore"):
            estimate = (pair + k) / (total + k * self.vocab_size)
        return np.where(total > 0, estimate, 1.0 / self.vocab_size)

    def _probs(self, history: np.ndarray, next_tokens: np.ndarray) -> np.ndarray:
        """P(next | history) for rows of ``history`` (P, h) with h <= n - 1 tokens and ``next_tokens`` (P,).

        Add-k uses order h + 1 only; backoff mixes every order from 1 to h + 1, starting from uniform.
        """
        h = history.shape[1]
        p = np.full(next_tokens.shape, 1.0 / self.vocab_size)
        orders = range(1, h + 2) if self.smoothing == "backoff" else [h + 1]
        for m in orders:
            context = np.zeros(next_tokens.shape, dtype=np.int64)
            for j in range(h - (m - 1), h):  # the last m - 1 tokens of the history
                context = context * self.vocab_size + history[:, j]
            p = self._update(m, context, next_tokens, p)
        return p

    def next_token_probs(self, context: Sequence[int] = ()) -> np.ndarray:
        """The distribution (vocab_size,) of the token after ``context``; only its last n - 1 tokens matter.

        The entries sum to 1. A context shorter than n - 1 tokens is predicted from the tokens it has."""
        context = _as_tokens(context, self.vocab_size, "context")
        keep = min(self.n - 1, context.size)
        history = context[context.size - keep :]
        nexts = np.arange(self.vocab_size, dtype=np.int64)
        return self._probs(np.tile(history, (self.vocab_size, 1)), nexts)

    def log_prob(self, tokens: Any) -> np.ndarray:
        """The log-probability (nats) of each of ``tokens[1:]`` given the tokens before it (at most n - 1 of them).

        Returns an array of ``len(tokens) - 1`` values; ``-inf`` where add-0 smoothing meets an unseen pair."""
        tokens = _as_tokens(tokens, self.vocab_size)
        self._require_fitted()
        if tokens.size < 2:
            return np.zeros(0)
        h = self.n - 1
        out = np.empty(tokens.size - 1)
        # Positions 1..h-1 have a shorter history than n - 1 tokens: a handful, done one by one.
        for i in range(1, min(h, tokens.size)):
            out[i - 1] = self._probs(tokens[None, :i], tokens[i : i + 1])[0]
        # Every later position i has its full history tokens[i-h:i]: all of them at once.
        first = max(h, 1)
        if tokens.size > first:
            count = tokens.size - first
            history = (
                np.stack([tokens[first - h + j : first - h + j + count] for j in range(h)], axis=1)
                if h
                else np.zeros((count, 0), dtype=np.int64)
            )
            out[first - 1 :] = self._probs(history, tokens[first:])
        with np.errstate(divide="ignore"):
            return np.log(out)

    def loss(self, tokens: Any) -> float:
        """Mean negative log-likelihood (nats per token) of ``tokens[1:]``, as ``F.cross_entropy`` would report.

        Divide by ``math.log(2)`` for bits per character."""
        log_probs = self.log_prob(tokens)
        if log_probs.size == 0:
            raise ValueError("Need at least two tokens to measure a loss.")
        return float(-log_probs.mean())

    def context_counts(self, tokens: Any) -> np.ndarray:
        """For each position ``i >= n - 1`` of ``tokens``, how often its context ``tokens[i-n+1:i]`` occurred in
        the training text. ``(model.context_counts(val) == 0).mean()`` is the fraction of contexts never seen."""
        tokens = _as_tokens(tokens, self.vocab_size)
        counts = self._require_fitted()[-1]
        codes = self._codes(tokens, self.n) // self.vocab_size
        return _lookup(counts.context_keys, counts.context_totals, codes)

    # ------------------------------------------------------------------------------------------ sampling

    def sample(
        self, context: Sequence[int], n: int, generator: torch.Generator | np.random.Generator | int | None = None
    ) -> list[int]:
        """Continue ``context`` by ``n`` sampled tokens; returns context + new tokens as a list of ids.

        generator: a ``torch.Generator`` (or a numpy ``Generator``, or an int seed) makes the sample repeat;
        None uses torch's global generator.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n (the number of tokens to sample) must be a whole number >= 0, got {n!r}.")
        out = [int(t) for t in _as_tokens(context, self.vocab_size, "context")]
        if isinstance(generator, int) and not isinstance(generator, bool):
            generator = torch.Generator().manual_seed(generator)
        for _ in range(n):
            probs = self.next_token_probs(out[max(0, len(out) - (self.n - 1)) :] if self.n > 1 else [])
            if isinstance(generator, np.random.Generator):
                token = int(generator.choice(self.vocab_size, p=probs / probs.sum()))
            else:
                token = int(torch.multinomial(torch.from_numpy(probs), 1, generator=generator))
            out.append(token)
        return out


# ---------------------------------------------------------------------------------------------- the yardstick

#: The counting models every trained model of the course is measured against: each order from 1 to 8, with
#: Witten-Bell backoff (the best smoothing of chapter 04). Past 8 characters of context they only get worse.
COUNTING_ORDERS = tuple(range(1, 9))


def counting_baselines(
    train_tokens: Any, texts: dict[str, Any], vocab_size: int, orders: Sequence[int] = COUNTING_ORDERS
) -> dict[int, dict[str, float]]:
    """Bits per token of the backoff counting model of each order on each text: ``{n: {text name: bits}}``.

    The course's one yardstick. Chapters 04, 05, 11 and 12 call it on the training split and the *whole*
    validation (and test) split, so "the best counting model" is the same model and the same number wherever
    it is quoted. Fitting the largest order counts every lower one too (``lower_order``), so this is one fit.
    """
    if not orders:
        raise ValueError("counting_baselines needs at least one order, e.g. COUNTING_ORDERS")
    largest = NGramModel(max(orders), vocab_size, smoothing="backoff").fit(train_tokens)
    return {
        n: {name: largest.lower_order(n).loss(tokens) / math.log(2) for name, tokens in texts.items()} for n in orders
    }


def best_counting_order(baselines: dict[int, dict[str, float]], text: str = "val") -> int:
    """The order whose counting model scores lowest on ``text``: chosen on validation, then quoted on test."""
    if not baselines or text not in next(iter(baselines.values())):
        raise ValueError(f"best_counting_order needs baselines measured on {text!r}; see counting_baselines")
    return min(baselines, key=lambda n: baselines[n][text])
