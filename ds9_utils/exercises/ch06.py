"""Chapter 06's exercises: switching one head off, the parameter count of attention, how time grows with T."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register
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
