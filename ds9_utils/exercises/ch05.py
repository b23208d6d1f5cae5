"""Chapter 05's exercises: a test that catches a head seeing the future, the scaled softmax, attention by distance,
the batches of training windows."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from ds9_utils.exercises import Exercise, close_problem, equal_problem, register, with_typical_mistake
from ds9_utils.model import Head


def sees_the_future(head: nn.Module, n_embd: int, block_size: int) -> bool:
    # Change only the last input; a causal head's outputs at every earlier position must stay the same.
    torch.manual_seed(0)
    x = torch.randn(2, block_size, n_embd)
    x_changed = x.clone()
    x_changed[:, -1] += 10.0
    with torch.no_grad():
        return not torch.allclose(head(x)[:, :-1], head(x_changed)[:, :-1])


class _PeekingHead(Head):
    """A head without its mask, or with a mask shifted by ``shift`` so that each position sees that far ahead."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, shift: int | None):
        super().__init__(n_embd, head_size, block_size)
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.key(x), self.query(x), self.value(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        if self.shift is not None:
            T = x.size(1)
            scores = scores.masked_fill(torch.ones(T, T).tril(self.shift) == 0, float("-inf"))
        return F.softmax(scores, dim=-1) @ v


def _check_sees_the_future(answer) -> list[str]:
    torch.manual_seed(1)
    heads = [
        ("ds9_utils.model.Head (causal)", Head(16, 8, 6), False),
        ("a head without a mask", _PeekingHead(16, 8, 6, None), True),
        ("a head whose positions see one character ahead", _PeekingHead(16, 8, 6, 1), True),
    ]
    found = []
    for name, head, expected in heads:
        got = answer(head, 16, 6)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = bool(got)
        if not isinstance(got, bool):
            return [f"sees_the_future should return True or False, got {got!r}"]
        found.append(equal_problem(f"sees_the_future({name})", got, expected))
    return [problem for problem in found if problem]


register(
    Exercise(
        id="05.1",
        title="Take the mask away",
        check=_check_sees_the_future,
        solution=sees_the_future,
        verified="passes the causal Head and catches a head with no mask and one that peeks a single step ahead",
    )
)


def causal_attention_weights(q: torch.Tensor, k: torch.Tensor, scaled: bool) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1)
    if scaled:
        scores = scores / math.sqrt(k.size(-1))
    T = q.size(-2)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def _largest_weights() -> None:
    """The plot of the exercise: how peaked the softmax gets with the head size, with and without the scale."""
    torch.manual_seed(0)
    sizes = [4, 16, 64, 256, 1024]
    for scaled in (False, True):
        largest = []
        for d in sizes:
            weights = causal_attention_weights(torch.randn(16, 32, d), torch.randn(16, 32, d), scaled)
            largest.append(weights.max(dim=-1).values[:, 1:].mean().item())  # row 0 always has a single 1
        plt.plot(sizes, largest, marker="o", label="with 1/√d" if scaled else "without the scale")
    plt.xscale("log", base=2)
    plt.xlabel("head size d")
    plt.ylabel("average largest weight in a row")
    plt.legend()
    plt.show()


def _weights_masked_after_softmax(q, k, scaled):
    """A typical mistake: the softmax over every position, then the future set to 0 (rows no longer sum to 1)."""
    scores = q @ k.transpose(-2, -1) / (math.sqrt(k.size(-1)) if scaled else 1.0)
    T = q.size(-2)
    return F.softmax(scores, dim=-1).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), 0.0)


def _weights_masked_with_zero(q, k, scaled):
    """A typical mistake: the future's scores set to 0 instead of -inf, so exp(0) = 1 still gives them weight."""
    scores = q @ k.transpose(-2, -1) / (math.sqrt(k.size(-1)) if scaled else 1.0)
    T = q.size(-2)
    return F.softmax(scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), 0.0), dim=-1)


def _check_causal_attention_weights(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    for d in (4, 64):
        q, k = torch.randn(3, 5, d, generator=generator), torch.randn(3, 5, d, generator=generator)
        for scaled in (True, False):
            expected = causal_attention_weights(q, k, scaled)
            got = answer(q, k, scaled)
            problem = close_problem(f"causal_attention_weights(q, k, scaled={scaled}) with d={d}", got, expected)
            if problem is None:
                continue
            return [
                with_typical_mistake(
                    problem,
                    got,
                    (
                        (
                            _weights_masked_after_softmax,
                            "you masked after the softmax, so each row no longer sums to 1: fill the future's scores "
                            "with -inf before it",
                        ),
                        (
                            _weights_masked_with_zero,
                            "you filled the future's scores with 0, and exp(0) = 1 still gives them weight: fill them "
                            "with -inf",
                        ),
                    ),
                    (q, k, scaled),
                    atol=1e-5,
                    rtol=1e-4,
                )
            ]
    return []


register(
    Exercise(
        id="05.2",
        title="How peaked is an unscaled softmax?",
        builds="a masked (causal) attention head's weights",
        check=_check_causal_attention_weights,
        solution=causal_attention_weights,
        verified="matches the causal softmax of QKᵀ, scaled and unscaled, for head sizes 4 and 64",
        demo=_largest_weights,
    )
)


def weight_by_distance(maps: torch.Tensor, max_distance: int = 10) -> torch.Tensor:
    # maps: (N, T, T), row t = where position t looks. Distance d back is the diagonal d below the main one.
    return torch.stack([maps.diagonal(offset=-d, dim1=-2, dim2=-1).mean() for d in range(max_distance + 1)])


def _check_weight_by_distance(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 12, 12, generator=generator)
    maps = F.softmax(scores.masked_fill(torch.ones(12, 12).triu(1) == 1, float("-inf")), dim=-1)
    looks_back_2 = torch.eye(12).roll(-2, dims=1).tril().unsqueeze(0)  # every position looks 2 back (if it can)
    found = [
        close_problem("weight_by_distance(random causal maps, 10)", answer(maps, 10), weight_by_distance(maps)),
        close_problem(
            "weight_by_distance(maps, 3) where each position looks 2 back",
            answer(looks_back_2, 3),
            weight_by_distance(looks_back_2, 3),
        ),
    ]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="05.3",
        title="Attention by distance",
        check=_check_weight_by_distance,
        solution=weight_by_distance,
        verified="averages each diagonal of random causal maps, and finds a head that always looks 2 back",
    )
)


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator):
    # One random start per row, drawn so that a whole window and its next character fit in the text.
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in starts.tolist()])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts.tolist()])  # each target: the next character
    return x, y


def _batch_without_shift(data, block_size, batch_size, generator):
    """A typical mistake: the targets are the inputs themselves, not the characters that follow them."""
    x, _ = get_batch(data, block_size, batch_size, generator)
    return x, x.clone()


def _batch_short_of_the_end(data, block_size, batch_size, generator):
    """A typical mistake: starts drawn from one fewer place, so the last window of the text is never used."""
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator).tolist()
    x = torch.stack([data[i : i + block_size] for i in starts])
    return x, torch.stack([data[i + 1 : i + 1 + block_size] for i in starts])


def _check_get_batch(answer) -> list[str]:
    from ds9_utils.train import get_batch as library_get_batch

    data = torch.arange(100, 140)  # every token its own number: a window shows where it starts
    for block_size, batch_size, seed in ((8, 4, 0), (5, 16, 1), (39, 3, 2)):
        what = f"get_batch(data of 40 tokens, block_size={block_size}, batch_size={batch_size})"
        expected = library_get_batch(data, block_size, batch_size, torch.Generator().manual_seed(seed))
        got = answer(data, block_size, batch_size, torch.Generator().manual_seed(seed))
        if not (isinstance(got, tuple) and len(got) == 2):
            return [f"{what} should return a pair (x, y), got {type(got).__name__}"]
        for mistake, hint in (
            (_batch_without_shift, "your targets y are the inputs x: each target is the character *after* its input"),
            (
                _batch_short_of_the_end,
                "your windows start at 0 to len(data) - block_size - 2: draw starts with "
                "torch.randint(len(data) - block_size, ...), so the last window of the text can be drawn too",
            ),
        ):
            try:
                wrong = mistake(data, block_size, batch_size, torch.Generator().manual_seed(seed))
            except RuntimeError:  # the short range is empty when a window fills the whole text
                continue
            if all(isinstance(t, torch.Tensor) for t in got) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, wrong)
            ):
                if not all(torch.equal(a, b) for a, b in zip(got, expected)):
                    return [hint]
        for name, mine, theirs in zip(("x", "y"), got, expected):
            if problem := close_problem(f"{what}: {name}", mine, theirs, atol=0, rtol=0):
                return [problem]
    return []


register(
    Exercise(
        id="05.4",
        title="Build the batches",
        builds="get_batch",
        check=_check_get_batch,
        solution=get_batch,
        verified="the same windows and targets as ds9_utils.train.get_batch for the same seed, up to the last window",
    )
)
