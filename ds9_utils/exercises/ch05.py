"""Chapter 05's exercises: a test that catches a head seeing the future, the scaled softmax, attention by distance."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from ds9_utils.exercises import Exercise, close_problem, equal_problem, register
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


def _check_causal_attention_weights(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    for d in (4, 64):
        q, k = torch.randn(3, 5, d, generator=generator), torch.randn(3, 5, d, generator=generator)
        for scaled in (True, False):
            expected = causal_attention_weights(q, k, scaled)
            if problem := close_problem(
                f"causal_attention_weights(q, k, scaled={scaled}) with d={d}", answer(q, k, scaled), expected
            ):
                return [problem]
    return []


register(
    Exercise(
        id="05.2",
        title="How peaked is an unscaled softmax?",
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
