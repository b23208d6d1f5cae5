"""Chapter 06's exercises: switching one head off, the parameter count of attention, how time grows with T,
and all heads at once: split, attend, merge."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register, with_typical_mistake
from ds9_utils.model import CausalSelfAttention, GPTConfig


def without_head(attention: CausalSelfAttention, head: int) -> CausalSelfAttention:
    # The projection reads head h's output from input columns h * head_size to (h + 1) * head_size:
    # zero them in a copy, and that head no longer reaches the output. The original stays as it was.
    head_size = attention.n_embd // attention.n_head
    silenced = copy.deepcopy(attention)
    with torch.no_grad():
        silenced.proj.weight[:, head * head_size : (head + 1) * head_size] = 0.0
    return silenced


def _check_without_head(answer) -> list[str]:
    torch.manual_seed(0)
    attention = CausalSelfAttention(GPTConfig(vocab_size=1, block_size=8, n_layer=1, n_head=4, n_embd=16))
    original = copy.deepcopy(attention.state_dict())
    x = torch.randn(2, 8, 16)
    found = []
    for head in (0, 2):
        got = answer(attention, head)
        if not isinstance(got, torch.nn.Module):
            return [f"without_head(attention, {head}) should return a module, got {type(got).__name__}"]
        with torch.no_grad():
            found.append(
                close_problem(
                    f"the output of without_head(attention, {head})", got(x), without_head(attention, head)(x)
                )
            )
        if any(not torch.equal(value, attention.state_dict()[name]) for name, value in original.items()):
            return [f"without_head(attention, {head}) changed the original module: change a copy (copy.deepcopy)"]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="06.1",
        title="Which head matters most?",
        check=_check_without_head,
        solution=without_head,
        verified="silences exactly one head (heads 0 and 2 of a 4-head layer) and leaves the original untouched",
    )
)


def attention_parameters(n_embd: int) -> int:
    # qkv: (3 n_embd) x n_embd, proj: n_embd x n_embd; the heads only group the columns, so n_head is absent.
    return 3 * n_embd * n_embd + n_embd * n_embd


def _check_attention_parameters(answer) -> list[str]:
    for n_embd in (384, 64, 12):
        for n_head in (1, 6, 12) if n_embd % 12 == 0 else (1, 4):
            layer = CausalSelfAttention(GPTConfig(vocab_size=1, block_size=8, n_layer=1, n_head=n_head, n_embd=n_embd))
            counted = sum(p.numel() for p in layer.parameters())
            if problem := equal_problem(
                f"attention_parameters({n_embd}) (the code counts {n_head} heads)", answer(n_embd), counted
            ):
                return [problem]
    return []


register(
    Exercise(
        id="06.2",
        title="Count by formula",
        check=_check_attention_parameters,
        solution=attention_parameters,
        verified="equals the parameters of CausalSelfAttention for n_embd 12, 64 and 384, with 1 to 12 heads",
    )
)


def growth_exponent(lengths: list[int], times: list[float]) -> float:
    # If time ~ c * T^p, then log time = log c + p log T: p is the slope of a straight line fitted in log-log.
    slope, _ = np.polyfit(np.log(lengths), np.log(times), 1)
    return float(slope)


def _check_growth_exponent(answer) -> list[str]:
    lengths = [32, 64, 128, 256]
    rng = np.random.default_rng(0)
    cases = [
        ("time = 0.01 T", [0.01 * T for T in lengths], 1.0),
        ("time = 3e-4 T²", [3e-4 * T**2 for T in lengths], 2.0),
    ]
    noisy = [0.02 * T * math.exp(rng.normal(0, 0.1)) + 1e-4 * T**2 for T in lengths]
    cases.append(("measured-looking times", noisy, growth_exponent(lengths, noisy)))
    found = [
        number_problem(f"growth_exponent(T = {lengths}, {name})", answer(lengths, times), expected, rel=1e-3)
        for name, times, expected in cases
    ]
    return [problem for problem in found if problem]


register(
    Exercise(
        id="06.3",
        title="The cost of the T × T matrix",
        check=_check_growth_exponent,
        solution=growth_exponent,
        verified="finds exponent 1 for linear times, 2 for quadratic ones, and the fitted slope of noisy ones",
    )
)


def attend_all_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int) -> torch.Tensor:
    # q, k, v: (B, T, C) with every head's numbers side by side. Split C into n_head heads of C // n_head,
    # and make the heads a batch dimension: (B, T, C) -> (B, T, n_head, head_size) -> (B, n_head, T, head_size).
    B, T, C = q.shape
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    # Causal attention for every head at once (chapter 05's softmax(QK^T / sqrt(d) + mask) V).
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    y = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v
    # Merge: undo the split, (B, n_head, T, head_size) -> (B, T, n_head, head_size) -> (B, T, C).
    return y.transpose(1, 2).reshape(B, T, C)


def _split_without_transpose(q, k, v, n_head):
    """A typical mistake: viewing (B, T, C) straight as (B, n_head, T, head_size), which mixes positions."""
    B, T, C = q.shape
    q, k, v = (t.reshape(B, n_head, T, C // n_head) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)


def _merge_without_transpose(q, k, v, n_head):
    """A typical mistake: merging (B, n_head, T, head_size) back with a reshape alone."""
    B, T, C = q.shape
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.reshape(B, T, C)


def _check_attend_all_heads(answer) -> list[str]:
    generator = torch.Generator().manual_seed(6)
    for B, T, C, n_head in [(2, 5, 8, 2), (1, 7, 12, 3), (3, 4, 16, 4), (2, 6, 8, 1)]:
        with torch.random.fork_rng():  # random weights, without moving the notebook's own random numbers
            torch.manual_seed(B * 1000 + T * 100 + C + n_head)
            config = GPTConfig(vocab_size=1, block_size=T, n_layer=1, n_head=n_head, n_embd=C)
            attention = CausalSelfAttention(config).eval()
        x = torch.randn(B, T, C, generator=generator)
        with torch.no_grad():
            q, k, v = attention.qkv(x).split(C, dim=-1)
            expected = attention(x)  # the library: split, attend, merge, then the output projection
            got = answer(q.clone(), k.clone(), v.clone(), n_head)
            what = f"attend_all_heads for B={B}, T={T}, C={C}, n_head={n_head}"
            if isinstance(got, torch.Tensor) and tuple(got.shape) != (B, T, C):
                return [f"{what} has shape {tuple(got.shape)}, expected {(B, T, C)}: merge the heads back"]
            projected = attention.proj(got) if isinstance(got, torch.Tensor) else got
            problem = close_problem(f"{what}, then the projection", projected, expected)
            if problem is None:
                continue
            return [
                with_typical_mistake(
                    problem,
                    got,
                    (
                        (
                            _split_without_transpose,
                            "you viewed (B, T, C) straight as (B, n_head, T, head_size), "
                            "which mixes positions: view it "
                            "as (B, T, n_head, head_size) first, then .transpose(1, 2)",
                        ),
                        (
                            _merge_without_transpose,
                            "you merged the heads with a reshape alone: transpose (B, n_head, T, head_size) back to "
                            "(B, T, n_head, head_size) first, then reshape to (B, T, C)",
                        ),
                    ),
                    (q, k, v, n_head),
                    atol=1e-5,
                    rtol=1e-4,
                )
            ]
    return []


register(
    Exercise(
        id="06.4",
        title="Split the heads, attend, merge them",
        builds="splitting and merging heads",
        check=_check_attend_all_heads,
        solution=attend_all_heads,
        verified="the same output as ds9_utils.model.CausalSelfAttention for 1 to 4 heads, every position",
    )
)


def qk_norm(
    q: torch.Tensor, k: torch.Tensor, q_gain: torch.Tensor, k_gain: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    # q, k: (B, n_head, T, head_size). Divide each head's query and key at each position by its own root mean
    # square (over head_size), then scale by the gains: QK^T can no longer grow without bound.
    def normalise(t: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return t / torch.sqrt(t.pow(2).mean(dim=-1, keepdim=True) + eps) * gain

    return normalise(q, q_gain), normalise(k, k_gain)


def _qk_norm_whole_vector(q, k, q_gain, k_gain, eps=1e-6):
    """A typical mistake: one root mean square over all heads' numbers of a position, not each head's own."""

    def normalise(t, gain):
        B, n_head, T, head_size = t.shape
        whole = t.transpose(1, 2).reshape(B, T, n_head * head_size)
        rms = torch.sqrt(whole.pow(2).mean(dim=-1, keepdim=True) + eps)  # (B, T, 1)
        return t / rms[:, None] * gain

    return normalise(q, q_gain), normalise(k, k_gain)


def _qk_norm_over_positions(q, k, q_gain, k_gain, eps=1e-6):
    """A typical mistake: the mean taken down the positions (dim=-2) instead of across head_size."""

    def normalise(t, gain):
        return t / torch.sqrt(t.pow(2).mean(dim=-2, keepdim=True) + eps) * gain

    return normalise(q, q_gain), normalise(k, k_gain)


def _check_qk_norm(answer) -> list[str]:
    generator = torch.Generator().manual_seed(65)
    for B, T, C, n_head in [(2, 5, 16, 2), (1, 6, 24, 4), (2, 4, 8, 1)]:
        with torch.random.fork_rng():  # random weights, without moving the notebook's own random numbers
            torch.manual_seed(B * 100 + C)
            config = GPTConfig(vocab_size=1, block_size=T, n_layer=1, n_head=n_head, n_embd=C, norm="rms", qk_norm=True)
            attention = CausalSelfAttention(config).eval()
        with torch.no_grad():
            for norm in (attention.q_norm, attention.k_norm):
                norm.weight.uniform_(0.5, 1.5, generator=generator)
            x = torch.randn(B, T, C, generator=generator) * 2
            raw = attention.qkv(x).view(B, T, 3, n_head, C // n_head).permute(2, 0, 3, 1, 4)
            expected_q, expected_k, _ = attention._queries_keys_values(x)
            args = (raw[0].clone(), raw[1].clone(), attention.q_norm.weight.clone(), attention.k_norm.weight.clone())
            got = answer(*args)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return [f"qk_norm should return the pair (q, k), got {type(got).__name__}"]
        what = f"qk_norm for B={B}, T={T}, n_head={n_head}, head_size={C // n_head}"
        problem = close_problem(f"the queries of {what}", got[0], expected_q) or close_problem(
            f"the keys of {what}", got[1], expected_k
        )
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got[0],
                (
                    (
                        lambda *a: _qk_norm_whole_vector(*a)[0],
                        "you divided by one root mean square over all the heads of a position; each head's query and "
                        "key get their own, over their head_size numbers",
                    ),
                    (
                        lambda *a: _qk_norm_over_positions(*a)[0],
                        "your mean ran down the positions (dim=-2); take it across "
                        "each vector's head_size numbers, dim=-1",
                    ),
                ),
                args,
                atol=1e-5,
                rtol=1e-4,
            )
        ]
    return []


register(
    Exercise(
        id="06.5",
        title="QK-norm: queries and keys of one size",
        builds="QK-norm",
        check=_check_qk_norm,
        solution=qk_norm,
        verified="the same queries and keys as CausalSelfAttention with qk_norm=True, for every head and position",
    )
)
