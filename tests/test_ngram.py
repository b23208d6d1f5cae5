"""Unit tests of ds9_utils.ngram: the count-based n-gram models of notebooks 04 and 11."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from ds9_utils.ngram import NGramModel

TEXT = (
    "Odo: I don't trust him. Quark: You don't trust anybody. Odo: That's true. "
    "Sisko: Major, report. Kira: The Cardassians are hailing us, Captain. "
) * 5
CHARS = sorted(set(TEXT))
V = len(CHARS)
TOKENS = [CHARS.index(c) for c in TEXT]

SMOOTHINGS = [0.0, 0.5, 1.0, "backoff"]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_probabilities_sum_to_one(n, smoothing):
    model = NGramModel(n, V, smoothing).fit(TOKENS)
    for context in ([], TOKENS[:1], TOKENS[10:20], [V - 1] * 6):  # short, long, seen and never seen
        probs = model.next_token_probs(context)
        assert probs.shape == (V,)
        assert (probs >= 0).all()
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)


def test_unigram_matches_direct_counts():
    counts = Counter(TOKENS)
    model = NGramModel(1, V, 0.0).fit(TOKENS)
    expected = np.array([counts[t] / len(TOKENS) for t in range(V)])
    np.testing.assert_allclose(model.next_token_probs([]), expected)
    np.testing.assert_allclose(model.next_token_probs(TOKENS[:7]), expected)  # n=1 ignores the context


@pytest.mark.parametrize("k", [0.0, 1.0])
def test_bigram_matches_direct_counts(k):
    pairs = Counter(zip(TOKENS, TOKENS[1:]))
    model = NGramModel(2, V, k).fit(TOKENS)
    for previous in {TOKENS[0], TOKENS[5], TOKENS[-1]}:
        row = np.array([pairs[(previous, c)] for c in range(V)], dtype=float)
        expected = (row + k) / (row.sum() + k * V)
        np.testing.assert_allclose(model.next_token_probs([5, previous]), expected)  # only the last one counts


def test_log_prob_matches_next_token_probs_position_by_position():
    for smoothing in (1.0, "backoff"):
        model = NGramModel(3, V, smoothing).fit(TOKENS)
        text = TOKENS[3:40]
        log_probs = model.log_prob(text)
        assert log_probs.shape == (len(text) - 1,)
        for i in range(1, len(text)):
            p = model.next_token_probs(text[max(0, i - 2) : i])[text[i]]
            assert log_probs[i - 1] == pytest.approx(math.log(p))
        assert model.loss(text) == pytest.approx(-log_probs.mean())


@pytest.mark.parametrize("smoothing", [1.0, "backoff"])
def test_training_text_is_more_likely_than_shuffled_text(smoothing):
    shuffled = TOKENS[:]
    random.Random(0).shuffle(shuffled)
    for n in (2, 3, 4):
        model = NGramModel(n, V, smoothing).fit(TOKENS)
        assert model.loss(TOKENS) < model.loss(shuffled) - 0.5


def test_longer_context_fits_training_text_better():
    losses = [NGramModel(n, V, 0.01).fit(TOKENS).loss(TOKENS) for n in range(1, 6)]
    assert losses == sorted(losses, reverse=True)


def test_add_zero_gives_infinite_loss_on_unseen_pair_and_uniform_on_unseen_context():
    model = NGramModel(2, V, 0.0).fit(TOKENS)
    unseen = next((a, b) for a in range(V) for b in range(V) if (a, b) not in set(zip(TOKENS, TOKENS[1:])))
    assert model.loss(list(unseen)) == math.inf
    lonely = NGramModel(2, V + 1, 0.0).fit(TOKENS)  # token V never occurs: its context is unseen
    np.testing.assert_allclose(lonely.next_token_probs([V]), np.full(V + 1, 1 / (V + 1)))


def test_context_counts_and_table_size():
    model = NGramModel(3, V, 1.0).fit(TOKENS)
    counts = model.context_counts(TOKENS[:30])
    assert counts.shape == (28,)
    # A context counts once for every time a token followed it in training: every pair but the text's last.
    contexts = Counter(zip(TOKENS[:-2], TOKENS[1:-1]))
    assert counts.tolist() == [contexts[(TOKENS[i], TOKENS[i + 1])] for i in range(28)]
    assert model.num_ngrams == len(set(zip(TOKENS, TOKENS[1:], TOKENS[2:])))
    assert model.num_contexts == len(contexts)
    assert (NGramModel(3, V, 1.0).fit(TOKENS).context_counts([V - 1, V - 1, 0]) == 0).all()


@pytest.mark.parametrize("smoothing", [1.0, "backoff"])
def test_sampling_is_seeded(smoothing):
    model = NGramModel(4, V, smoothing).fit(TOKENS)
    prompt = TOKENS[:3]
    a = model.sample(prompt, 50, torch.Generator().manual_seed(7))
    b = model.sample(prompt, 50, torch.Generator().manual_seed(7))
    c = model.sample(prompt, 50, torch.Generator().manual_seed(8))
    assert a == b and a != c
    assert a[:3] == prompt and len(a) == 53 and all(0 <= t < V for t in a)
    assert model.sample(prompt, 20, 3) == model.sample(prompt, 20, 3)
    assert model.sample(prompt, 20, np.random.default_rng(1)) == model.sample(prompt, 20, np.random.default_rng(1))


def test_add_zero_samples_only_seen_continuations():
    model = NGramModel(3, V, 0.0).fit(TOKENS)
    seen = set(zip(TOKENS, TOKENS[1:], TOKENS[2:]))
    out = model.sample(TOKENS[:2], 200, torch.Generator().manual_seed(0))
    assert all(tri in seen for tri in zip(out, out[1:], out[2:]))


def test_lower_order_shares_counts_and_matches_a_fresh_fit():
    big = NGramModel(5, V, 1.0).fit(TOKENS)
    for n in range(1, 6):
        for smoothing in (0.5, "backoff"):
            fresh = NGramModel(n, V, smoothing).fit(TOKENS)
            assert big.lower_order(n, smoothing).loss(TOKENS[:50]) == pytest.approx(fresh.loss(TOKENS[:50]))
    assert big.lower_order(2).smoothing == 1.0
    with pytest.raises(ValueError, match="from 1 to"):
        big.lower_order(6)


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="n must be"):
        NGramModel(0, V)
    with pytest.raises(ValueError, match="smoothing"):
        NGramModel(2, V, "kneser-ney")
    with pytest.raises(ValueError, match="smoothing"):
        NGramModel(2, V, -1.0)
    with pytest.raises(ValueError, match="63 bits"):
        NGramModel(20, 100)
    with pytest.raises(RuntimeError, match="fit"):
        NGramModel(2, V).loss(TOKENS)
    with pytest.raises(ValueError, match="outside"):
        NGramModel(2, V).fit([0, 1, V])
    with pytest.raises(ValueError, match="empty"):
        NGramModel(2, V).fit([])


def test_counting_baselines_are_each_order_fitted_alone_and_the_best_is_chosen_on_validation():
    from ds9_utils.ngram import COUNTING_ORDERS, best_counting_order, counting_baselines

    rng = np.random.default_rng(0)
    # a text with structure up to three tokens back, so that the orders differ
    train = rng.integers(0, 5, 3000)
    train[3:] = np.where(rng.random(2997) < 0.7, (train[:-3] + 1) % 5, train[3:])
    val, test = train[:400].copy(), train[400:800].copy()
    baselines = counting_baselines(train, {"val": val, "test": test}, 5, orders=(1, 2, 4))
    assert list(baselines) == [1, 2, 4]
    for n in (1, 2, 4):
        alone = NGramModel(n, 5, smoothing="backoff").fit(train)
        assert baselines[n]["val"] == pytest.approx(alone.loss(val) / math.log(2))
        assert baselines[n]["test"] == pytest.approx(alone.loss(test) / math.log(2))
    assert best_counting_order(baselines) == min((1, 2, 4), key=lambda n: baselines[n]["val"]) == 4
    assert COUNTING_ORDERS == tuple(range(1, 9))
    with pytest.raises(ValueError, match="measured on 'train'"):
        best_counting_order(baselines, "train")
    with pytest.raises(ValueError, match="at least one order"):
        counting_baselines(train, {"val": val}, 5, orders=())
