"""Chapter 10's exercises: min-p sampling, sampling in batches, the period of a greedy loop, top-p (nucleus)
filtering, one step of attention with a KV cache, and temperature with top-k written by hand."""

from __future__ import annotations

import random
import time

import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, register, with_typical_mistake
from ds9_utils.generate import generate, next_token_distribution
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


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    # Sort each row, most likely first; keep a token while the mass *before* it is still below top_p.
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    keep_sorted = mass_before < top_p  # the first token is always kept: nothing comes before it
    keep = keep_sorted.scatter(-1, order, keep_sorted)  # back to the vocabulary's order
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def _top_p_short(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """A typical mistake: keeping the tokens whose running total is below top_p, which drops the one that
    crosses it (and, when the top token alone passes top_p, drops everything)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(dim=-1) < top_p
    keep = keep_sorted.scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def _top_p_unnormalised(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """A typical mistake: zeroing the tail but not renormalising, so the row no longer sums to 1."""
    filtered = top_p_filter(probs, top_p)
    return filtered * torch.where(filtered > 0, probs, torch.zeros_like(probs)).sum(dim=-1, keepdim=True)


def _check_top_p_filter(answer) -> list[str]:
    from ds9_utils.generate import next_token_distribution

    generator = torch.Generator().manual_seed(3)
    peaked = 3 * torch.randn(65, generator=generator)  # one row of logits, like a new line
    batch = torch.randn(4, 65, generator=generator)  # several rows at once, each with its own nucleus
    for what, logits, top_p in [
        ("a peaked distribution, top_p=0.9", peaked, 0.9),
        ("a peaked distribution, top_p=0.05 (the top token alone already passes it)", peaked, 0.05),
        ("a batch of 4 rows, top_p=0.5", batch, 0.5),
        ("a batch of 4 rows, top_p=1.0 (keeps everything)", batch, 1.0),
    ]:
        probs = torch.softmax(logits, dim=-1)
        expected = next_token_distribution(logits, top_p=top_p) if top_p < 1 else probs
        got = answer(probs.clone(), top_p)
        problem = close_problem(f"top_p_filter on {what}", got, expected)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (
                        _top_p_short,
                        "you kept the tokens whose running total stays below top_p; keep the token that crosses it too "
                        "(the smallest set whose mass *reaches* top_p), so at least one token always remains",
                    ),
                    (
                        _top_p_unnormalised,
                        "you zeroed the tail but did not divide by what is left: each row must sum to 1",
                    ),
                ),
                (probs, top_p),
                nan_as_zero=True,
            )
        ]
    return []


register(
    Exercise(
        id="10.4",
        title="Top-p, by hand",
        builds="top-p sampling",
        check=_check_top_p_filter,
        solution=top_p_filter,
        verified="the same nucleus as ds9_utils.generate.next_token_distribution(top_p=...), row by row, renormalised",
    )
)


def cached_attention_step(q, k, v, k_cache, v_cache):
    # q, k, v: (B, heads, 1, d) for the new position; the caches: (B, heads, t, d) for the positions before it.
    k_cache = torch.cat([k_cache, k], dim=-2)  # the new position is in the past of its own query too
    v_cache = torch.cat([v_cache, v], dim=-2)
    scores = q @ k_cache.transpose(-2, -1) / k.size(-1) ** 0.5  # (B, heads, 1, t + 1): no mask, all is past
    return torch.softmax(scores, dim=-1) @ v_cache, k_cache, v_cache


def _step_without_itself(q, k, v, k_cache, v_cache):
    """A typical mistake: attending over the cache before adding the new key and value."""
    if k_cache.size(-2) == 0:
        return torch.zeros_like(v), torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    out = torch.softmax(q @ k_cache.transpose(-2, -1) / k.size(-1) ** 0.5, dim=-1) @ v_cache
    return out, torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)


def _step_unscaled(q, k, v, k_cache, v_cache):
    """A typical mistake: the scores without the 1 / sqrt(d) of chapter 05."""
    k_cache, v_cache = torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)
    return torch.softmax(q @ k_cache.transpose(-2, -1), dim=-1) @ v_cache, k_cache, v_cache


def _run_cached(step, q, k, v):
    """Feed the positions one at a time through ``step``; the outputs stacked, (B, heads, T, d)."""
    k_cache, v_cache = k[..., :0, :], v[..., :0, :]
    outputs = []
    for t in range(q.size(-2)):
        out, k_cache, v_cache = step(q[..., t : t + 1, :], k[..., t : t + 1, :], v[..., t : t + 1, :], k_cache, v_cache)
        outputs.append(out)
    return torch.cat(outputs, dim=-2), k_cache


def _outputs_without_itself(q, k, v):
    return _run_cached(_step_without_itself, q, k, v)[0]


def _outputs_unscaled(q, k, v):
    return _run_cached(_step_unscaled, q, k, v)[0]


def _check_cached_attention_step(answer) -> list[str]:
    generator = torch.Generator().manual_seed(10)
    for B, heads, T, d in ((1, 1, 5, 4), (2, 4, 9, 8)):
        q, k, v = (torch.randn(B, heads, T, d, generator=generator) * 2 for _ in range(3))
        what = f"the outputs of {T} cached steps, one position at a time (B={B}, heads={heads}, d={d})"
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        try:
            got, k_cache = _run_cached(answer, q, k, v)
        except (TypeError, ValueError) as error:
            return [f"cached_attention_step should return (out, k_cache, v_cache): {error}"]
        if problem := close_problem("the key cache after every step", k_cache, k):
            return [problem]
        problem = close_problem(what, got, expected)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (
                        _outputs_without_itself,
                        "you attended before adding the new key and value: a position sees itself too",
                    ),
                    (_outputs_unscaled, "your scores are not divided by sqrt(d), the size of a key"),
                ),
                (q, k, v),
                atol=1e-5,
            )
        ]
    return []


register(
    Exercise(
        id="10.5",
        title="One step with a KV cache",
        builds="a KV-cache decode step",
        check=_check_cached_attention_step,
        solution=cached_attention_step,
        verified="position by position, the same outputs as causal attention over the whole sequence at once",
    )
)


def temperature_top_k(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    # Divide the scores by the temperature first (below 1 sharpens, above 1 flattens), then keep the k highest
    # scores of each row (ties with the k-th stay) by setting the others to -inf, so that softmax gives them 0.
    logits = logits / temperature
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth_largest, float("-inf")), dim=-1)


def _top_k_after_softmax(logits, temperature, top_k):
    """A typical mistake: softmax first, then zero all but the k largest, without renormalising."""
    probs = torch.softmax(logits / temperature, dim=-1)
    kth_largest = torch.topk(probs, top_k, dim=-1).values[..., -1:]
    return probs.masked_fill(probs < kth_largest, 0.0)


def _temperature_multiplied(logits, temperature, top_k):
    """A typical mistake: multiplying the scores by the temperature instead of dividing."""
    return temperature_top_k(logits * temperature**2, temperature, top_k)


def _check_temperature_top_k(answer) -> list[str]:
    generator = torch.Generator().manual_seed(106)
    logits = torch.randn(3, 40, generator=generator) * 2
    for temperature, top_k in [(0.5, 5), (1.0, 1), (2.0, 12), (0.8, 40)]:
        expected = next_token_distribution(logits, temperature=temperature, top_k=top_k)
        got = answer(logits.clone(), temperature, top_k)
        problem = close_problem(f"temperature_top_k(3 rows of 40 scores, {temperature}, {top_k})", got, expected)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (
                        _top_k_after_softmax,
                        "you zeroed the tokens outside the top k after the softmax, "
                        "so the row no longer sums to 1: set "
                        "their scores to -inf before it (or divide by what is left)",
                    ),
                    (_temperature_multiplied, "you multiplied the scores by the temperature; divide them by it"),
                ),
                (logits, temperature, top_k),
                atol=1e-6,
                rtol=1e-5,
            )
        ]
    return []


register(
    Exercise(
        id="10.6",
        title="Temperature and top-k, by hand",
        builds="temperature and top-k sampling",
        check=_check_temperature_top_k,
        solution=temperature_top_k,
        verified="the same probabilities as ds9_utils.generate.next_token_distribution for every temperature and k",
    )
)
