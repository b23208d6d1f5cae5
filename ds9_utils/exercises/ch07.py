"""Chapter 07's exercises: a block's parameter count, the post-norm block, dropout written by hand, a block's
forward with its residual paths, and the modern recipe's two changes to the block: RMSNorm and ReLU²."""

from __future__ import annotations

import torch
from torch import nn

from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register, with_typical_mistake
from ds9_utils.model import Block, FeedForward, GPTConfig, RMSNorm


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


def block_forward(block: Block, x: torch.Tensor) -> torch.Tensor:
    # Two residual paths. Each part reads a normalised copy of x and *adds* what it computes to x itself,
    # so the unchanged x always flows through to the next block (and its gradient flows back the same way).
    x = x + block.attn(block.ln_1(x))  # the tokens talk to each other
    x = x + block.ffwd(block.ln_2(x))  # each token thinks on its own
    return x


def _block_without_residuals(block, x):
    """A typical mistake: no residual paths, each part replaces x instead of adding to it."""
    x = block.attn(block.ln_1(x))
    return block.ffwd(block.ln_2(x))


def _block_adds_to_the_norm(block, x):
    """A typical mistake: adding each part's output to the normalised x instead of to x itself."""
    h = block.ln_1(x)
    x = h + block.attn(h)
    h = block.ln_2(x)
    return h + block.ffwd(h)


def _check_block_forward(answer) -> list[str]:
    generator = torch.Generator().manual_seed(7)
    for B, T, C, n_head in [(2, 8, 16, 2), (1, 5, 24, 4), (3, 6, 8, 1)]:
        with torch.random.fork_rng():  # random weights, without moving the notebook's own random numbers
            torch.manual_seed(B * 1000 + T * 100 + C)
            block = Block(GPTConfig(vocab_size=1, block_size=T, n_layer=1, n_head=n_head, n_embd=C)).eval()
            with torch.no_grad():  # gains away from 1, so that a misplaced norm shows
                for norm in (block.ln_1, block.ln_2):
                    norm.weight.uniform_(0.5, 1.5)
        x = torch.randn(B, T, C, generator=generator) * 3 + 1
        with torch.no_grad():
            got = answer(block, x.clone())
            problem = close_problem(f"block_forward for x of shape {(B, T, C)}", got, block(x))
            if problem is None:
                continue
            return [
                with_typical_mistake(
                    problem,
                    got,
                    (
                        (
                            _block_without_residuals,
                            "each part replaced x instead of adding to it: keep the residual paths, x = x + attn(...)",
                        ),
                        (
                            _block_adds_to_the_norm,
                            "you added each part's output to the normalised x; add it to x itself, "
                            "x = x + block.attn(block.ln_1(x)), so the unchanged x flows through",
                        ),
                    ),
                    (block, x),
                    atol=1e-5,
                    rtol=1e-4,
                )
            ]
    return []


register(
    Exercise(
        id="07.4",
        title="A block's forward, with its residual paths",
        builds="a block's forward with its residual paths",
        check=_check_block_forward,
        solution=block_forward,
        verified="the same output as ds9_utils.model.Block: x + attn(ln_1(x)), then + ffwd(ln_2(x))",
    )
)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    # Divide each vector (the last dimension) by its root mean square, then scale each number by its gain.
    # No mean is subtracted and no bias added: that is all RMSNorm drops from LayerNorm.
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x / rms * weight


def _rms_norm_centred(x, weight, eps=1e-6):
    """A typical mistake: subtracting the mean first, which is LayerNorm's step, not RMSNorm's."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return rms_norm(centred, weight, eps)


def _rms_norm_without_root(x, weight, eps=1e-6):
    """A typical mistake: dividing by the mean square, without its square root."""
    return x / (x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def _check_rms_norm(answer) -> list[str]:
    generator = torch.Generator().manual_seed(75)
    for shape in [(4, 16), (2, 5, 32), (3, 8)]:
        norm = RMSNorm(shape[-1])
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=generator)
        x = torch.randn(shape, generator=generator) * 3 + 2  # a mean far from 0, so that centring shows
        with torch.no_grad():
            got = answer(x.clone(), norm.weight.detach().clone(), norm.eps)
            problem = close_problem(f"rms_norm of x with shape {shape}", got, norm(x))
            if problem is None:
                continue
            return [
                with_typical_mistake(
                    problem,
                    got,
                    (
                        (
                            _rms_norm_centred,
                            "you subtracted the mean: that is LayerNorm; RMSNorm only divides by the root mean square",
                        ),
                        (_rms_norm_without_root, "you divided by the mean square; take its square root first"),
                    ),
                    (x, norm.weight.detach(), norm.eps),
                    atol=1e-5,
                    rtol=1e-4,
                )
            ]
    return []


register(
    Exercise(
        id="07.5",
        title="RMSNorm: the modern recipe's norm",
        builds="RMSNorm",
        check=_check_rms_norm,
        solution=rms_norm,
        verified="the same output as ds9_utils.model.RMSNorm: x / sqrt(mean(x²) + eps) times the gains",
    )
)


def relu_squared_feed_forward(x: torch.Tensor, expand: torch.Tensor, project: torch.Tensor) -> torch.Tensor:
    # Widen (x @ expand.T, as nn.Linear does), then max(0, z)²: negative scores give 0, positive ones their
    # square, so strong features count for more; then project back to n_embd.
    hidden = torch.relu(x @ expand.T).square()
    return hidden @ project.T


def _feed_forward_relu(x, expand, project):
    """A typical mistake: plain ReLU, without the square."""
    return torch.relu(x @ expand.T) @ project.T


def _feed_forward_square_first(x, expand, project):
    """A typical mistake: squaring before the ReLU, which makes every score positive."""
    return torch.relu((x @ expand.T).square()) @ project.T


def _check_relu_squared_feed_forward(answer) -> list[str]:
    generator = torch.Generator().manual_seed(76)
    for n_embd in (8, 16, 32):
        with torch.random.fork_rng():  # random weights, without moving the notebook's own random numbers
            torch.manual_seed(n_embd)
            layer = FeedForward(n_embd, activation="relu2").eval()
        x = torch.randn(2, 5, n_embd, generator=generator)
        expand, project = layer.expand.weight.detach(), layer.proj.weight.detach()
        with torch.no_grad():
            got = answer(x.clone(), expand.clone(), project.clone())
            problem = close_problem(f"the feed-forward layer with n_embd={n_embd}", got, layer(x))
            if problem is None:
                continue
            return [
                with_typical_mistake(
                    problem,
                    got,
                    (
                        (_feed_forward_relu, "that is plain ReLU: square it, relu(z).square()"),
                        (
                            _feed_forward_square_first,
                            "you squared before the ReLU, so negative scores came out "
                            "positive: relu first, then square",
                        ),
                    ),
                    (x, expand, project),
                    atol=1e-5,
                    rtol=1e-4,
                )
            ]
    return []


register(
    Exercise(
        id="07.6",
        title="ReLU²: the modern recipe's feed-forward",
        builds="the ReLU² feed-forward layer",
        check=_check_relu_squared_feed_forward,
        solution=relu_squared_feed_forward,
        verified="the same output as ds9_utils.model.FeedForward(activation='relu2'): widen, relu(z)², project",
    )
)
