"""Chapter 10's exercises: min-p sampling, sampling in batches, the period of a greedy loop."""

from __future__ import annotations

import random
import time

import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, register
from ds9_utils.generate import generate
from ds9_utils.model import GPT, GPTConfig


def min_p_filter(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    # Keep every token at least min_p times as likely as the most likely one (per row), then renormalise.
    kept = torch.where(probs >= min_p * probs.amax(dim=-1, keepdim=True), probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def _check_min_p_filter(answer) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    peaked = torch.softmax(3 * torch.randn(65, generator=generator), dim=-1)  # one row, like a new line
    batch = torch.softmax(torch.randn(4, 65, generator=generator), dim=-1)  # several rows at once
    for what, probs, min_p in [
        ("a peaked distribution, min_p=0.1", peaked, 0.1),
        ("a peaked distribution, min_p=0 (keeps everything)", peaked, 0.0),
        ("a peaked distribution, min_p=1 (keeps the top token only)", peaked, 1.0),
        ("a batch of 4 rows, min_p=0.3 (each row has its own most likely token)", batch, 0.3),
    ]:
        problem = close_problem(f"min_p_filter on {what}", answer(probs.clone(), min_p), min_p_filter(probs, min_p))
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="10.1",
        title="min-p sampling",
        check=_check_min_p_filter,
        solution=min_p_filter,
        verified="keeps the tokens at least min_p times as likely as the top one, row by row, and renormalises",
    )
)


def _tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()


def sample_batch(model, prompt_ids: list[int], rows: int, new_tokens: int, generator) -> torch.Tensor:
    # One call for all the rows: every step's matrix multiplications then handle the rows together.
    idx = torch.tensor([prompt_ids] * rows, device=next(model.parameters()).device)
    return generate(model, idx, new_tokens, generator=generator)


def _check_sample_batch(answer) -> list[str]:
    model, prompt = _tiny_model(), [1, 2, 3]
    got = answer(model, prompt, 5, 12, torch.Generator().manual_seed(0))
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (5, 15):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return [
            f"sample_batch(model, [1, 2, 3], rows=5, new_tokens=12, generator) should be a (5, 15) tensor "
            f"(prompt + new tokens in each row), got {shape}"
        ]
    if not torch.equal(got[:, :3], torch.tensor([prompt] * 5)):
        return ["every row should start with the prompt [1, 2, 3]: return what generate returns"]
    expected = sample_batch(model, prompt, 5, 12, torch.Generator().manual_seed(0))
    if not torch.equal(got, expected):
        return [
            "with the same generator, one generate call on a batch of 5 rows samples other tokens than yours: "
            "did you call generate once per row? Make one (rows, prompt length) tensor and call it once"
        ]
    return []


def _batch_speed_demo() -> None:
    model = _tiny_model()
    sample_batch(model, [1], 1, 5, torch.Generator().manual_seed(0))  # the first call pays a one-off set-up cost
    for rows in (1, 8):
        started = time.perf_counter()
        sample_batch(model, [1], rows, 100, torch.Generator().manual_seed(0))
        print(f"{rows} row(s): {rows * 100 / (time.perf_counter() - started):,.0f} tokens per second")


register(
    Exercise(
        id="10.2",
        title="Batches are cheap",
        check=_check_sample_batch,
        solution=sample_batch,
        verified="samples all the rows in one generate call (prompt first in every row)",
        demo=_batch_speed_demo,
    )
)


def shortest_period(text: str, window: int = 300) -> int | None:
    # The smallest shift n for which the last `window` characters equal the `window` characters n earlier.
    tail = text[-window:]
    return next((n for n in range(1, window + 1) if text[-window - n : len(text) - n] == tail), None)


def _check_shortest_period(answer) -> list[str]:
    rng = random.Random(0)
    noise = "".join(rng.choice("abcdefghij ") for _ in range(700))
    cases = [
        ("'ODO: No.\\n' repeated", "ODO: No.\n" * 80, 300, 9),
        ("a loop of 7 after some noise", noise[:200] + "KIRA: a" * 60, 300, 7),
        ("a loop whose period is 3 (6 also repeats it)", "xyz" * 300, 300, 3),
        ("a single character repeated", "-" * 700, 300, 1),
        ("text that never repeats", noise, 300, None),
        ("'ODO: No.\\n' repeated, with window=50", "ODO: No.\n" * 30, 50, 9),
        ("a loop of 60 characters, longer than window=50", noise[:60] * 5, 50, None),
    ]
    for what, text, window, expected in cases:
        problem = equal_problem(f"shortest_period on {what}", answer(text, window), expected)
        if problem:
            return [problem]
    return []


register(
    Exercise(
        id="10.3",
        title="Where does greedy text loop?",
        check=_check_shortest_period,
        solution=shortest_period,
        verified="finds the shortest period of the text's end, and None when there is none up to the window",
    )
)
