"""Chapter 15's exercises: a scaling law with a floor, what the KV cache saves, gradient accumulation."""

from __future__ import annotations

import math

import numpy as np
import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, number_problem, register
from ds9_utils.generate import generate
from ds9_utils.model import GPT, GPTConfig


def fit_with_floor(x, y, candidates: int = 400) -> tuple[float, float, float]:
    # y = E + a x^-alpha: for each floor E below the smallest y, log(y - E) against log x should be a straight
    # line; keep the floor whose line fits best, and read a and alpha off that line.
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    best = None
    for floor in np.linspace(0.0, 0.99 * y.min(), candidates):
        slope, intercept = np.polyfit(np.log(x), np.log(y - floor), deg=1)
        residual = np.sum((np.log(y - floor) - (intercept + slope * np.log(x))) ** 2)
        if best is None or residual < best[0]:
            best = (residual, float(floor), math.exp(intercept), -slope)
    return best[1:]


def _check_fit_with_floor(answer) -> list[str]:
    x = np.array([1e4, 3e4, 1e5, 3e5, 1e6, 3e6])
    for floor, a, alpha in [(1.0, 20.0, 0.3), (0.0, 8.0, 0.12), (0.6, 50.0, 0.5)]:
        y = floor + a * x**-alpha
        got = answer(x, y)
        if not isinstance(got, tuple) or len(got) != 3:
            return [f"fit_with_floor should return a tuple (E, a, alpha), got {got!r}"]
        what = f"for losses made with E={floor}, a={a}, alpha={alpha}"
        problem = (
            number_problem(f"E {what}", got[0], floor, rel=0.02, abs_tol=0.01)
            or number_problem(f"alpha {what}", got[2], alpha, rel=0.05)
            or number_problem(f"a {what}", got[1], a, rel=0.2)
        )
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="15.1",
        title="A law with a floor",
        check=_check_fit_with_floor,
        solution=fit_with_floor,
        verified="recovers the floor, the scale and the exponent of losses made from known laws",
    )
)


def positions_processed(prompt_length: int, new_tokens: int, use_cache: bool, block_size: int) -> int:
    # Follow generate's loop: when the window is full it slides by a quarter of the block, and the cache must be
    # refilled from the whole window; otherwise a current cache needs only the newest position.
    slide = max(1, block_size // 4)
    total, length, window_start, cache_is_current = 0, prompt_length, max(0, prompt_length - block_size), False
    for _ in range(new_tokens):
        if length - window_start > block_size:
            window_start, cache_is_current = window_start + slide, False
        if use_cache and cache_is_current:
            total += 1
        else:  # the whole window: every step without a cache, a (re)fill with one
            total += length - window_start
            cache_is_current = use_cache
        length += 1
    return total


def _measured_positions(prompt_length: int, new_tokens: int, use_cache: bool, block_size: int) -> int:
    """The positions ds9_utils' generate really sends through a GPT, counted at the model's input: its token
    embedding, which every path reads (a whole window in ``forward``, one token a row in ``decode_step``)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=block_size, n_layer=1, n_head=1, n_embd=8)).eval()
    counted = []
    model.token_embedding.register_forward_pre_hook(lambda module, args: counted.append(args[0].numel()))  # batch 1
    generate(model, torch.zeros(1, prompt_length, dtype=torch.long), new_tokens, use_cache=use_cache)
    return sum(counted)


def _check_positions_processed(answer) -> list[str]:
    for prompt_length, new_tokens, block_size in [(3, 5, 16), (10, 14, 8), (1, 12, 4)]:
        for use_cache in (False, True):
            what = (
                f"positions_processed(prompt_length={prompt_length}, new_tokens={new_tokens}, "
                f"use_cache={use_cache}, block_size={block_size})"
            )
            expected = _measured_positions(prompt_length, new_tokens, use_cache, block_size)
            problem = equal_problem(what, answer(prompt_length, new_tokens, use_cache, block_size), expected)
            if problem:
                return [problem + " (counted at the model's input during ds9_utils.generate.generate)"]
    return []


register(
    Exercise(
        id="15.2",
        title="When does the KV cache pay?",
        check=_check_positions_processed,
        solution=positions_processed,
        verified="the same count of positions as generate sends through the model, with and without the cache",
    )
)


def accumulated_gradients(model, xb: torch.Tensor, yb: torch.Tensor, micro_batches: int) -> list[torch.Tensor]:
    # Run the batch in slices one after another: .backward() adds to .grad, so dividing each slice's loss by
    # the number of slices adds up to the gradient of the whole batch's mean loss.
    model.zero_grad()
    for rows in torch.tensor_split(torch.arange(len(xb)), micro_batches):
        _, loss = model(xb[rows], yb[rows])
        (loss / micro_batches).backward()
    return [parameter.grad.clone() for parameter in model.parameters()]


def _flat(gradients) -> torch.Tensor:
    return torch.cat([gradient.detach().reshape(-1).double() for gradient in gradients])


def _check_accumulated_gradients(answer) -> list[str]:
    with torch.random.fork_rng():  # random weights and data, without moving the notebook's own random numbers
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16))
        xb, yb = torch.randint(20, (16, 8)), torch.randint(20, (16, 8))
    model.zero_grad()
    model(xb, yb)[1].backward()
    whole_batch = [parameter.grad.clone() for parameter in model.parameters()]
    for micro_batches in (4, 2):
        model.zero_grad()
        model(xb[:2], yb[:2])[1].backward()  # leave stale gradients behind, as a previous step would
        stale = [parameter.grad.clone() for parameter in model.parameters()]
        got = answer(model, xb, yb, micro_batches)
        if not isinstance(got, (list, tuple)) or len(got) != len(whole_batch):
            return [
                f"accumulated_gradients should return a list of {len(whole_batch)} gradients (one per "
                f"parameter, in model.parameters() order), got {type(got).__name__}"
            ]
        for (name, _), gradient, expected in zip(model.named_parameters(), got, whole_batch):
            problem = close_problem(
                f"with {micro_batches} micro-batches, the gradient of {name}", gradient, expected, atol=1e-6, rtol=1e-4
            )
            if problem is None:
                continue
            if all(isinstance(gradient, torch.Tensor) for gradient in got):
                mistakes = {
                    "you added each micro-batch's loss whole: divide it by the number of micro-batches, so that the "
                    "sum is the whole batch's mean": _flat(whole_batch) * micro_batches,
                    "the previous step's gradients were still in .grad: call model.zero_grad() before the first "
                    "micro-batch": _flat(whole_batch) + _flat(stale),
                }
                for hint, wrong in mistakes.items():
                    if _flat(got).shape == wrong.shape and torch.allclose(_flat(got), wrong, atol=1e-6, rtol=1e-4):
                        return [f"{hint} ({problem})"]
            return [problem]
    return []


register(
    Exercise(
        id="15.3",
        title="Data parallelism on one processor",
        builds="data-parallel gradients (micro-batches)",
        check=_check_accumulated_gradients,
        solution=accumulated_gradients,
        verified="micro-batches whose losses are divided and added give the whole batch's gradient",
    )
)
