"""Chapter 08's exercises: positions as rotations, reading past the window, what depth and positions cost, the
sinusoidal position table built by hand, and two of the modern recipe's changes to the whole GPT: projections
that start at zero, and a head with its own matrix."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ds9_utils.exercises import Exercise, close_problem, equal_problem, register, with_typical_mistake
from ds9_utils.model import GPT, GPTConfig, sinusoidal_positions


def rotation_matrices(k: int, n_embd: int) -> torch.Tensor:
    # Pair (2i, 2i+1) of row t holds (sin tω_i, cos tω_i). Adding kω_i to the angle is a rotation:
    # [sin a, cos a] @ [[cos b, -sin b], [sin b, cos b]] = [sin(a + b), cos(a + b)], with b = kω_i.
    omegas = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    cos, sin = torch.cos(k * omegas), torch.sin(k * omegas)
    first_rows = torch.stack([cos, -sin], dim=-1)
    second_rows = torch.stack([sin, cos], dim=-1)
    return torch.stack([first_rows, second_rows], dim=-2)  # (n_embd // 2, 2, 2)


def _check_rotation_matrices(answer) -> list[str]:
    for k, n_embd, positions in [(5, 16, 40), (1, 8, 10), (12, 32, 64)]:
        matrices = answer(k, n_embd)
        if not isinstance(matrices, torch.Tensor) or tuple(matrices.shape) != (n_embd // 2, 2, 2):
            shape = tuple(matrices.shape) if isinstance(matrices, torch.Tensor) else type(matrices).__name__
            return [f"rotation_matrices({k}, {n_embd}) should be a tensor of shape {(n_embd // 2, 2, 2)}, got {shape}"]
        table = sinusoidal_positions(positions, n_embd)
        pairs = table[:-k].view(positions - k, n_embd // 2, 1, 2)  # row t, pair i, as a 1 x 2 row vector
        rotated = (pairs @ matrices.float()).view(positions - k, n_embd)
        problem = close_problem(
            f"rows t of the table times rotation_matrices({k}, {n_embd}) (they should be rows t + {k})",
            rotated,
            table[k:],
            atol=1e-4,
        )
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="08.1",
        title="Positions as rotations",
        check=_check_rotation_matrices,
        solution=rotation_matrices,
        verified="one fixed rotation per pair of dimensions turns every position t into t + k, for every t",
    )
)


def last_window(idx: torch.Tensor, block_size: int) -> torch.Tensor:
    # Keep the newest block_size tokens of every row: all a model with block_size positions can read.
    return idx[:, -block_size:]


def _check_last_window(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    for rows, length, block_size in [(2, 20, 8), (3, 8, 8), (1, 5, 8)]:
        idx = torch.randint(50, (rows, length), generator=generator)
        problem = close_problem(
            f"last_window(a {rows} x {length} batch, {block_size})",
            answer(idx, block_size),
            idx[:, -block_size:],
            atol=0,
        )
        if problem:
            return [problem]
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8, positional="learned"))
    model(answer(torch.randint(50, (1, 30), generator=generator), 8))  # must not raise "longer than block_size"
    return []


def _beyond_the_window_demo() -> None:
    longer = sinusoidal_positions(64, 16)
    print(
        "the sinusoidal table goes on past any window: a 64-row table starts with the 32-row one:",
        torch.allclose(longer[:32], sinusoidal_positions(32, 16)),
    )
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16, positional="learned"))
    text = torch.randint(50, (1, 40))
    try:
        model(text)
    except ValueError as error:
        print("a learned-position model given 40 tokens:", error)
    print("given last_window(text, 32):", tuple(model(last_window(text, 32))[0].shape), "logits")


register(
    Exercise(
        id="08.2",
        title="Beyond the window",
        check=_check_last_window,
        solution=last_window,
        verified="keeps the newest block_size tokens of every row (and short rows whole); a GPT reads the result",
        demo=_beyond_the_window_demo,
    )
)


def gpt_parameters(config: GPTConfig) -> int:
    # Tied token embedding / output layer: vocab x C. A learned position table: block_size x C.
    # Each block: qkv 3C² + proj C² + feed-forward 4C² + 4C², and two layer norms of C; then the last layer norm.
    C = config.n_embd
    positions = config.block_size * C if config.positional == "learned" else 0
    per_block = 12 * C * C + 2 * C
    return config.vocab_size * C + positions + config.n_layer * per_block + C


def _check_gpt_parameters(answer) -> list[str]:
    configs = [
        GPTConfig(vocab_size=60, block_size=16, n_layer=1, n_head=2, n_embd=8),
        GPTConfig(vocab_size=60, block_size=16, n_layer=4, n_head=2, n_embd=8),
        GPTConfig(vocab_size=90, block_size=64, n_layer=2, n_head=4, n_embd=32),
        GPTConfig(vocab_size=90, block_size=64, n_layer=2, n_head=4, n_embd=32, positional="sinusoidal"),
        GPTConfig(vocab_size=90, block_size=64, n_layer=2, n_head=4, n_embd=32, positional="none"),
    ]
    for config in configs:
        expected = sum(p.numel() for p in GPT(config).parameters())
        what = (
            f"gpt_parameters for n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"block_size={config.block_size}, positional={config.positional!r}"
        )
        problem = equal_problem(what, answer(config), expected)
        if problem:
            return [problem + " (count what GPT(config).parameters() holds; the output layer shares the token table)"]
    return []


register(
    Exercise(
        id="08.3",
        title="Depth against parameters",
        check=_check_gpt_parameters,
        solution=gpt_parameters,
        verified="counts a GPT's parameters without building it: 12·n_embd² + 2·n_embd per block, block_size·n_embd "
        "for learned positions",
    )
)


def sinusoidal_table(block_size: int, n_embd: int) -> torch.Tensor:
    # Pair i (dimensions 2i and 2i+1) turns at the angular frequency ω_i = 10000^(-2i / n_embd): the first pair
    # once per 2π positions, the last about once per 10000·2π. Row t holds (sin tω_i, cos tω_i) for every pair.
    positions = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)  # (block_size, 1)
    omegas = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float32) / n_embd)  # (n_embd // 2,)
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(positions * omegas)
    table[:, 1::2] = torch.cos(positions * omegas)
    return table


def _table_swapped(block_size, n_embd):
    """A typical mistake: cosines in the even dimensions and sines in the odd ones."""
    table = sinusoidal_positions(block_size, n_embd)
    return table.view(block_size, n_embd // 2, 2).flip(-1).reshape(block_size, n_embd)


def _table_pair_index(block_size, n_embd):
    """A typical mistake: ω_i = 10000^(-i / n_embd), with the pair's index i instead of its first dimension 2i."""
    positions = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)
    omegas = 10000.0 ** (-torch.arange(n_embd // 2, dtype=torch.float32) / n_embd)
    return torch.stack((torch.sin(positions * omegas), torch.cos(positions * omegas)), dim=-1).flatten(1)


def _check_sinusoidal_table(answer) -> list[str]:
    for block_size, n_embd in [(16, 8), (64, 32), (5, 2), (40, 64)]:
        expected = sinusoidal_positions(block_size, n_embd)
        got = answer(block_size, n_embd)
        problem = close_problem(f"sinusoidal_table({block_size}, {n_embd})", got, expected, atol=1e-4, rtol=1e-4)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (
                        _table_swapped,
                        "sines and cosines swapped: the sine goes in the even dimension 2i, the cosine in 2i+1",
                    ),
                    (
                        _table_pair_index,
                        "your frequencies fall too slowly: ω_i = 10000^(-2i / n_embd), with 2i (the pair's first "
                        "dimension), not the pair's index i",
                    ),
                ),
                (block_size, n_embd),
                atol=1e-4,
                rtol=1e-4,
            )
        ]
    return []


register(
    Exercise(
        id="08.4",
        title="The sinusoidal position table",
        builds="the sinusoidal position table",
        check=_check_sinusoidal_table,
        solution=sinusoidal_table,
        verified="the same table as ds9_utils.model.sinusoidal_positions, row by row and pair by pair",
    )
)


def zero_init_residual_writes(model: GPT) -> GPT:
    # The weights that write into the residual stream: each block's attention projection and feed-forward
    # projection, and (when it has its own matrix) the output head. Start them at zero: every block begins as
    # the identity (x + 0) and the first prediction is uniform; the gradient still reaches them, since their
    # inputs are not zero, so they grow from nothing.
    with torch.no_grad():
        for block in model.blocks:
            block.attn.proj.weight.zero_()
            block.ffwd.proj.weight.zero_()
        if model.lm_head.weight is not model.token_embedding.weight:
            model.lm_head.weight.zero_()
    return model


def _names(names: set[str]) -> str:
    """Up to three parameter names, and how many more."""
    ordered = sorted(names)
    more = f" and {len(ordered) - 3} more" if len(ordered) > 3 else ""
    return ", ".join(ordered[:3]) + more


def _zeroed(model: GPT) -> set[str]:
    """The names of the parameters that are all zero."""
    return {name for name, parameter in model.named_parameters() if not parameter.detach().any()}


def _check_zero_init(answer) -> list[str]:
    for tie in (False, True):
        config = GPTConfig(vocab_size=30, block_size=8, n_layer=3, n_head=2, n_embd=16, tie_embeddings=tie)
        with torch.random.fork_rng():  # random weights, without moving the notebook's own random numbers
            torch.manual_seed(8)
            model, library = GPT(config), GPT(replace(config, zero_init=True))
        before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
        got = answer(model)
        if got is not model:
            return ["zero_init_residual_writes should change the model in place and return it"]
        expected, zeroed = _zeroed(library), _zeroed(model)
        what = f"with {'a tied' if tie else 'an untied'} head"
        if zeroed - expected:
            extra = sorted(zeroed - expected)
            reason = (
                "the token table is also the input: zeroing it makes every token look the same"
                if "token_embedding.weight" in extra
                else "with these at zero, nothing flows through the block and their gradients are zero too: "
                "zero only the weights that write into the residual stream (the projections and the head)"
            )
            return [f"{what}, you zeroed {_names(set(extra))}: {reason}"]
        if expected - zeroed:
            return [f"{what}, these still start random: {_names(expected - zeroed)}"]
        for name, parameter in model.named_parameters():
            if name not in expected and not torch.equal(parameter.detach(), before[name]):
                return [f"{what}, {name} changed; leave every other weight as it was"]
    return []


register(
    Exercise(
        id="08.5",
        title="Start every block as the identity",
        builds="zero-initialised projections",
        check=_check_zero_init,
        solution=zero_init_residual_writes,
        verified="zeroes the same weights as GPTConfig(zero_init=True), and nothing else, tied head or not",
    )
)


def untie_head(model: GPT) -> GPT:
    # A tied GPT reads tokens in and scores them out with one matrix. Give the head a matrix of its own: a new
    # Parameter holding a *copy* (clone) of the shared values, so that the two start equal and then learn apart.
    model.lm_head.weight = nn.Parameter(model.token_embedding.weight.detach().clone())
    return model


def _check_untie_head(answer) -> list[str]:
    config = GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16)
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = GPT(config)
    shared = model.token_embedding.weight.detach().clone()
    got = answer(model)
    if got is not model:
        return ["untie_head should change the model in place and return it"]
    head, table = model.lm_head.weight, model.token_embedding.weight
    if head is table:
        return ["the head and the token table are still one Parameter: give lm_head a new nn.Parameter"]
    if not isinstance(head, nn.Parameter):
        return [f"lm_head.weight should be an nn.Parameter, got {type(head).__name__}"]
    if head.data_ptr() == table.data_ptr():
        return [
            "the new Parameter shares its memory with the token table, so they would still change together: "
            "clone() the values"
        ]
    found = [
        close_problem("the new head's starting values (a copy of the shared matrix)", head, shared),
        close_problem("the token table after untying", table, shared),
        equal_problem(
            "the parameter count after untying (that of GPTConfig(tie_embeddings=False))",
            sum(parameter.numel() for parameter in model.parameters()),
            sum(parameter.numel() for parameter in GPT(replace(config, tie_embeddings=False)).parameters()),
        ),
    ]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="08.6",
        title="Give the head its own matrix",
        builds="an untied output head",
        check=_check_untie_head,
        solution=untie_head,
        verified="the head is a Parameter of its own, starting as a copy of the token table, with as many "
        "parameters as GPTConfig(tie_embeddings=False)",
    )
)
