"""Sampling text from a trained model, one token at a time.

Each step turns the model's last logits into a probability distribution (``next_token_distribution``:
temperature, then top-k, then top-p), draws the next token from it and appends it to the context.

The context window. A GPT attends to at most ``block_size`` tokens. When the text grows past that, the
oldest tokens must leave the context. The textbook loop keeps exactly the last ``block_size`` tokens, but
then every token's position changes at every step, so a KV cache (which stores keys and values computed at
the old positions) would be useless and everything must be recomputed. Here the window instead slides by
``context_slide`` tokens at once (a quarter of the block by default): when it is full, the oldest
``context_slide`` tokens leave, the cache is refilled from the rest in one forward pass, and generation
continues one token per step. The uncached path follows exactly the same rule, so ``use_cache`` changes the
speed, never the tokens. ``context_slide=1`` reproduces the textbook ``idx[:, -block_size:]`` loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import torch
from torch.nn import functional as F

from .tokenizers import Tokenizer

StopCondition = Callable[[torch.Tensor], bool] | Collection[Sequence[int]]


def _check_sampling_arguments(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (isinstance(temperature, (int, float)) and temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature must be a number >= 0 (0 means always pick the most likely token), got {temperature!r}."
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1 (or None to keep every token), got {top_k!r}.")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] (or None to keep every token), got {top_p!r}.")


def next_token_distribution(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Probabilities of the next token from its logits (..., vocab_size); each row sums to 1.

    temperature: divides the logits; below 1 sharpens the distribution, above 1 flattens it, 0 puts all the
        probability on the most likely token.
    top_k: keep only the k most likely tokens (tokens tied with the k-th are kept too).
    top_p: nucleus sampling, keep the smallest set of most likely tokens whose probabilities add up to at
        least top_p (always at least one token).
    """
    _check_sampling_arguments(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = mass_before >= top_p  # the tokens before this one already reach top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def stop_at_text(tokenizer: Tokenizer, text: str) -> Callable[[torch.Tensor], bool]:
    """A ``stop`` condition for ``generate``: end once every row's new text contains ``text``.

    For example ``stop_at_text(tokenizer, "\\n\\n[")`` ends at the next scene heading. Matching decoded text
    rather than token ids keeps it right for any tokenizer.
    """
    if not text:
        raise ValueError("stop_at_text needs a non-empty text to look for.")
    return lambda new_tokens: all(text in tokenizer.decode(row) for row in new_tokens.tolist())


def _stop_at_sequences(sequences: Collection[Sequence[int]]) -> Callable[[torch.Tensor], bool]:
    """A stop condition for one ``generate`` call: true once every row's new tokens have ended with one of
    ``sequences`` at some step. It remembers the finished rows, so it only needs to look at the newest tokens."""
    if isinstance(sequences, str) or any(isinstance(sequence, str) for sequence in sequences):
        raise ValueError(
            "stop sequences are token ids, not text: pass [tokenizer.encode(text)], "
            "or stop=stop_at_text(tokenizer, text)."
        )
    sequences = [tuple(int(token) for token in sequence) for sequence in sequences]
    if not sequences or any(len(sequence) == 0 for sequence in sequences):
        raise ValueError("stop must hold at least one non-empty sequence of token ids.")
    longest = max(len(sequence) for sequence in sequences)
    finished_rows: set[int] = set()

    def every_row_finished(new_tokens: torch.Tensor) -> bool:
        for row, tail in enumerate(new_tokens[:, -longest:].tolist()):
            if any(tuple(tail[-len(sequence) :]) == sequence for sequence in sequences):
                finished_rows.add(row)
        return len(finished_rows) == new_tokens.size(0)

    return every_row_finished


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    stop: StopCondition | None = None,
    context_slide: int | None = None,
) -> torch.Tensor:
    """Continue each row of ``idx`` (B, T) by up to ``max_new_tokens`` tokens; returns prompt + new tokens.

    The model is used in whatever mode it is in: call ``model.eval()`` first to switch dropout off
    (``generate_text`` does).

    use_cache: reuse keys and values between steps (models with ``new_kv_cache``, i.e. the GPT); the same
        tokens as without it, much faster.
    generator: a ``torch.Generator`` on the model's device, for reproducible sampling.
    stop: ends generation early. Either a callable that receives the new tokens so far (B, T_new) and returns
        True to stop, or a collection of token-id sequences: generation ends when every row's new tokens
        contain one of them (a row that finished first keeps sampling until then). The returned tokens
        include the stop sequence. See ``stop_at_text``.
    context_slide: how many of the oldest tokens leave the context at once when it is full (see the module
        docstring); default a quarter of the model's block_size, 1 reproduces the textbook loop.
    """
    _check_sampling_arguments(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}.")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(
            "idx must be a (batch, time) LongTensor of prompt token ids; use tokenizer.encode and torch.tensor([ids])."
        )
    if idx.size(0) == 0 or idx.size(1) == 0:
        raise ValueError("The prompt is empty: give at least one token to start from (e.g. a newline).")
    block_size = model.block_size
    if context_slide is None:
        context_slide = max(1, block_size // 4)
    if isinstance(context_slide, bool) or not isinstance(context_slide, int) or not 1 <= context_slide <= block_size:
        raise ValueError(
            f"context_slide must be a whole number from 1 to the model's block_size ({block_size}), "
            f"got {context_slide!r}."
        )
    should_stop = stop if (stop is None or callable(stop)) else _stop_at_sequences(stop)

    kv_cache = model.new_kv_cache() if use_cache and hasattr(model, "new_kv_cache") else None
    prompt_length = idx.size(1)
    window_start = max(0, prompt_length - block_size)
    cache_is_current = False  # does the cache hold every token of the window but the newest?
    for _ in range(max_new_tokens):
        if idx.size(1) - window_start > block_size:  # the window is full: slide it
            window_start += context_slide
            cache_is_current = False
        if kv_cache is None:
            logits, _ = model(idx[:, window_start:])
        elif cache_is_current:
            logits, _ = model(idx[:, -1:], kv_cache=kv_cache)
        else:  # (re)fill the cache from the whole window in one pass
            kv_cache.reset()
            logits, _ = model(idx[:, window_start:], kv_cache=kv_cache)
            cache_is_current = True
        last_logits = logits[:, -1, :]
        if temperature == 0:
            next_token = last_logits.argmax(dim=-1, keepdim=True)
        else:
            probs = next_token_distribution(last_logits, temperature, top_k, top_p)
            next_token = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat((idx, next_token), dim=1)
        if should_stop is not None and should_stop(idx[:, prompt_length:]):
            break
    return idx


def generate_text(
    model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, **generate_options
) -> str:
    """The prompt followed by up to ``max_new_tokens`` generated tokens, as text.

    Runs in eval mode (the model's mode is restored afterwards) and, like ``generate``, without gradients.
    ``generate_options`` are those of ``generate``
    (temperature, top_k, top_p, use_cache, generator, stop, context_slide).
    """
    if not prompt:
        raise ValueError("The prompt is empty: give at least one character to start from (e.g. '\\n').")
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        out = generate(model, idx, max_new_tokens, **generate_options)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0].tolist())
