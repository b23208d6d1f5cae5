"""Chapter 07's exercises: a block's parameter count, the post-norm block, dropout written by hand."""

from __future__ import annotations

import torch
from torch import nn

from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register
from ds9_utils.model import Block, GPTConfig


def block_parameters(n_embd: int) -> int:
    attention = 3 * n_embd * n_embd + n_embd * n_embd  # qkv and the output projection
    feed_forward = 4 * n_embd * n_embd + 4 * n_embd * n_embd  # expand and project back
    layer_norms = 2 * n_embd  # two gains
    return attention + feed_forward + layer_norms  # = 12 n_embd² + 2 n_embd


def _check_block_parameters(answer) -> list[str]:
    for n_embd in (64, 192, 384, 8):
        block = Block(GPTConfig(vocab_size=1, block_size=8, n_layer=1, n_head=4, n_embd=n_embd))
        counted = sum(p.numel() for p in block.parameters())
        if problem := equal_problem(f"block_parameters({n_embd}) (counted in the code)", answer(n_embd), counted):
            return [problem]
    return []


register(
    Exercise(
        id="07.1",
        title="Count a block's parameters",
        check=_check_block_parameters,
        solution=block_parameters,
        verified="equals the parameters of Block for n_embd 8, 64, 192 and 384",
    )
)


class PostNormBlock(nn.Module):
    """The 2017 wiring: normalise after each residual addition, with the parts of an existing Block."""

    def __init__(self, block: Block):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, layer_cache=None) -> torch.Tensor:
        b = self.block
        x = b.ln_1(x + b.attn(x))
        return b.ln_2(x + b.ffwd(x))


def _check_post_norm_block(answer) -> list[str]:
    torch.manual_seed(0)
    block = Block(GPTConfig(vocab_size=1, block_size=8, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():  # gains and biases away from 1 and 0, so that a misplaced layer norm shows
        block.ln_1.weight.uniform_(0.5, 1.5)
        block.ln_2.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 16) * 3
    module = answer(block)
    if not isinstance(module, nn.Module):
        return [f"PostNormBlock(block) should build a module (a class like VariantBlock), got {module!r}"]
    with torch.no_grad():
        got = module(x)
        found = [close_problem("PostNormBlock(block)(x)", got, PostNormBlock(block)(x))]
        if found[0] and close_problem("", got, block(x)) is None:
            found = ["PostNormBlock(block) gives the pre-norm output: the norm goes after each addition"]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="07.2",
        title="Post-norm",
        check=_check_post_norm_block,
        solution=PostNormBlock,
        verified="computes ln_2(x + ffwd(x)) after x = ln_1(x + attn(x)), with the block's own parts",
    )
)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # In training, zero each number with probability p and scale the survivors by 1 / (1 - p), so that the
    # expected value is unchanged; in evaluation, do nothing.
    if not training or p == 0:
        return x
    keep = torch.rand_like(x) >= p
    return x * keep / (1 - p)


def _check_dropout(answer) -> list[str]:
    torch.manual_seed(0)
    x = torch.ones(100_000)
    problem = close_problem("dropout(x, 0.2, training=False)", answer(x, 0.2, False), x)
    if problem:
        return [problem + " (in evaluation mode dropout does nothing)"]
    first, second = answer(x, 0.2, True), answer(x, 0.2, True)
    if not isinstance(first, torch.Tensor) or first.shape != x.shape:
        return [f"dropout(ones, 0.2, training=True) should return a tensor shaped like x, got {type(first).__name__}"]
    found = [
        number_problem(
            "the share of zeros in dropout(ones, 0.2, training=True)", (first == 0).float().mean(), 0.2, abs_tol=0.01
        ),
        number_problem("the mean of dropout(ones, 0.2, training=True)", first.mean(), 1.0, abs_tol=0.01),
        number_problem("the value of the numbers dropout(ones, 0.2, training=True) keeps", first.max(), 1.25),
        None if not torch.equal(first, second) else "two calls in training mode zeroed the same numbers: draw anew",
    ]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="07.3",
        title="Dropout on and off",
        check=_check_dropout,
        solution=dropout,
        verified="does nothing in evaluation; in training zeroes 20% at random, scales the rest to 1.25, keeps "
        "the mean at 1",
    )
)
