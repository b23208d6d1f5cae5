"""Sampling text from a trained model, one token at a time.

Each step turns the model's last logits into a probability distribution (``next_token_distribution``:
temperature, then top-k, then top-p), draws the next token from it and appends it to the context.
``generate`` works on token ids; ``stream_text`` gives out the new text as it is written, piece by piece, and
``generate_text`` returns it all at once (the same loop underneath).

The context window. A GPT attends to at most ``block_size`` tokens. When the text grows past that, the
oldest tokens must leave the context. The textbook loop keeps exactly the last ``block_size`` tokens, but
then every token's position changes at every step, so a KV cache (which stores keys and values computed at
the old positions) would be useless and everything must be recomputed. Here the window instead slides by
``context_slide`` tokens at once (a quarter of the block by default): when it is full, the oldest
``context_slide`` tokens leave, the cache is refilled from the rest in one forward pass, and generation
continues one token per step. The uncached path follows exactly the same rule, so ``use_cache`` changes the
speed, never the tokens. ``context_slide=1`` reproduces the textbook ``idx[:, -block_size:]`` loop.

Speed. With the cache, one step of a small model is a few dozen small operations, so anything else done per
token shows: the arguments are checked once per call, the tokens go into one buffer allocated up front, each
new token goes through the model's lean ``decode_step`` (the cache is filled with ``forward``), and
stopping at a text decodes each new token once instead of the whole text again at every step. The
sampling itself is ``torch.multinomial``'s own method written out without its per-call checks (``_draw``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence

import torch
from torch.nn import functional as F

from .model import KVCache
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
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    return _filtered_probabilities(logits, temperature, top_k, top_p)


def _filtered_probabilities(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """``next_token_distribution`` for arguments already checked and a temperature above 0."""
    logits = logits.float()
    if temperature != 1:
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


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` (B, vocab_size), as (B, 1): the very token that
    ``torch.multinomial(probs, 1, generator=generator)`` draws, by the method it uses itself.

    Divide each probability by its own exponentially distributed noise and take the largest: token i wins
    with probability p_i (the "exponential race", a form of the Gumbel-max trick). Written out, it skips
    multinomial's checks of ``probs``, which cost two device syncs per token.
    """
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


def _token_picker(
    temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that turns the last logits (B, vocab_size) into the next tokens (B, 1), for arguments
    checked once, before the loop."""
    if temperature == 0:
        return lambda logits: logits.argmax(dim=-1, keepdim=True)
    return lambda logits: _draw(_filtered_probabilities(logits, temperature, top_k, top_p), generator)


class _IncrementalDecoder:
    """Text from token ids that arrive one at a time, in time proportional to their number.

    Decoding all the ids at every step would be quadratic; decoding each id alone would be wrong, since a
    token need not hold whole characters (a byte-level BPE token can hold half of "é") and some tokenizers
    decode a token differently after its neighbours. So each step decodes the ids that are not given out yet
    together with the ids of the previous piece (for context), gives out the text they add, and holds it back
    while it ends in an incomplete character (U+FFFD) or adds nothing.
    """

    #: After this many ids held back, give their text out anyway (U+FFFD and all): a model that samples broken
    #: UTF-8 forever still streams in linear time.
    max_held_back = 16

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)
        self.given_out = len(self.ids)  # ids[:given_out] are context: their text is already out

    def add(self, token_id: int) -> str:
        """The text that ``token_id`` completes: often one character, sometimes none or several."""
        self.ids.append(token_id)
        known = self.tokenizer.decode(self.ids[: self.given_out])
        text = self.tokenizer.decode(self.ids)
        complete = len(text) > len(known) and not text.endswith("\ufffd")
        if not complete and len(self.ids) - self.given_out < self.max_held_back:
            return ""
        return self._give_out(known, text)

    def flush(self) -> str:
        """The text held back, as it decodes (an incomplete character at the very end becomes U+FFFD)."""
        return self._give_out(self.tokenizer.decode(self.ids[: self.given_out]), self.tokenizer.decode(self.ids))

    def _give_out(self, known: str, text: str) -> str:
        self.ids = self.ids[self.given_out :]  # the ids given out now are the next step's context
        self.given_out = len(self.ids)
        return text[len(known) :]


class _StopText:
    """Looks for ``text`` in a text that arrives in pieces: each piece is searched together with the last
    ``len(text) - 1`` characters before it, so a match that straddles pieces is found and the work per piece
    does not grow with the length of the text."""

    def __init__(self, text: str):
        self.text = text
        self.tail = ""

    def found_in(self, piece: str) -> bool:
        """Whether ``text`` ends within ``piece`` (or appeared earlier)."""
        window = self.tail + piece
        self.tail = window[max(0, len(window) - len(self.text) + 1) :]
        return self.text in window


class _StopAtText:
    """``stop_at_text``'s condition: decodes each row's new tokens once, as they arrive (see
    ``_IncrementalDecoder``), and remembers which rows have written the text."""

    def __init__(self, tokenizer: Tokenizer, text: str):
        self.tokenizer = tokenizer
        self.text = text
        self._start(batch_size=0)

    def _start(self, batch_size: int) -> None:
        self.tokens_seen = 0
        self.decoders = [_IncrementalDecoder(self.tokenizer) for _ in range(batch_size)]
        self.watches = [_StopText(self.text) for _ in range(batch_size)]
        self.finished = [False] * batch_size

    def __call__(self, new_tokens: torch.Tensor) -> bool:
        batch_size, length = new_tokens.shape
        if length <= self.tokens_seen or batch_size != len(self.decoders):  # a new generation
            self._start(batch_size)
        for row, ids in enumerate(new_tokens[:, self.tokens_seen :].tolist()):
            for token_id in ids:
                if self.finished[row]:
                    break
                self.finished[row] = self.watches[row].found_in(self.decoders[row].add(token_id))
        self.tokens_seen = length
        return all(self.finished)


def stop_at_text(tokenizer: Tokenizer, text: str) -> Callable[[torch.Tensor], bool]:
    """A ``stop`` condition for ``generate``: end once every row's new text contains ``text``.

    For example ``stop_at_text(tokenizer, "\\n\\n[")`` ends at the next scene heading. Matching decoded text
    rather than token ids keeps it right for any tokenizer, even when the text straddles tokens. Each new
    token is decoded once, so the cost grows linearly with the length of the output.
    """
    if not text:
        raise ValueError("stop_at_text needs a non-empty text to look for.")
    return _StopAtText(tokenizer, text)


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


def _sampling_steps(
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
) -> Iterator[torch.Tensor]:
    """``generate``'s loop as an iterator that yields prompt + new tokens (B, T) after each step. Every
    argument is checked here, when it is called, rather than at the first step."""
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
    pick_next_token = _token_picker(temperature, top_k, top_p, generator)
    kv_cache = model.new_kv_cache() if use_cache and hasattr(model, "new_kv_cache") else None
    return _sampling_loop(model, idx, max_new_tokens, pick_next_token, kv_cache, context_slide, should_stop)


@torch.inference_mode()  # no gradients, and less bookkeeping per operation than no_grad
def _sampling_loop(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    pick_next_token: Callable[[torch.Tensor], torch.Tensor],
    kv_cache: KVCache | None,
    context_slide: int,
    should_stop: Callable[[torch.Tensor], bool] | None,
) -> Iterator[torch.Tensor]:
    batch_size, prompt_length = idx.shape
    tokens = idx.new_empty(batch_size, prompt_length + max_new_tokens)  # every token, written in place
    tokens[:, :prompt_length] = idx
    block_size = model.block_size
    window_start = max(0, prompt_length - block_size)
    cache_is_current = False  # does the cache hold every token of the window but the newest?
    for length in range(prompt_length, prompt_length + max_new_tokens):  # length: tokens so far
        if length - window_start > block_size:  # the window is full: slide it
            window_start += context_slide
            cache_is_current = False
        if kv_cache is None:
            logits = model(tokens[:, window_start:length])[0][:, -1]
        elif cache_is_current:  # the usual step: only the newest token goes through the model
            logits = model.decode_step(tokens[:, length - 1], kv_cache)
        else:  # (re)fill the cache from the whole window in one pass
            kv_cache.reset()
            logits = model(tokens[:, window_start:length], kv_cache=kv_cache)[0][:, -1]
            cache_is_current = True
        tokens[:, length : length + 1] = pick_next_token(logits)
        yield tokens[:, : length + 1]
        if should_stop is not None and should_stop(tokens[:, prompt_length : length + 1]):
            return


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
    (``generate_text`` does). Gradients are not tracked.

    use_cache: reuse keys and values between steps (models with ``new_kv_cache`` and ``decode_step``, the GPT):
        the same tokens as without it, much faster.
    generator: a ``torch.Generator`` on the model's device, for reproducible sampling.
    stop: ends generation early. Either a callable that receives the new tokens so far (B, T_new) and returns
        True to stop, or a collection of token-id sequences: generation ends when every row's new tokens
        contain one of them (a row that finished first keeps sampling until then). The returned tokens
        include the stop sequence. See ``stop_at_text``.
    context_slide: how many of the oldest tokens leave the context at once when it is full (see the module
        docstring); default a quarter of the model's block_size, 1 reproduces the textbook loop.
    """
    out = idx
    for tokens_so_far in _sampling_steps(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        use_cache=use_cache,
        generator=generator,
        stop=stop,
        context_slide=context_slide,
    ):
        out = tokens_so_far
    return out.clone()  # made outside inference mode, so that it can take part in training (feedback.py)


def _new_text(
    model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, **generate_options
) -> Iterator[str]:
    """The text after ``prompt``, piece by piece as it is generated (batch 1, eval mode, the model's mode
    restored when the iterator ends or is closed): what ``stream_text`` and ``generate_text`` share."""
    if not prompt:
        raise ValueError("The prompt is empty: give at least one character to start from (e.g. '\\n').")
    prompt_ids = tokenizer.encode(prompt)
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        decoder = _IncrementalDecoder(tokenizer, context=prompt_ids)
        for tokens in _sampling_steps(model, idx, max_new_tokens, **generate_options):
            piece = decoder.add(tokens[0, -1].item())
            if piece:
                yield piece
        rest = decoder.flush()
        if rest:
            yield rest
    finally:
        model.train(was_training)


def stream_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stop_text: str | None = None,
) -> Iterator[str]:
    """The text that follows ``prompt``, given out piece by piece as the model writes it (up to
    ``max_new_tokens`` tokens), so that it can be printed as it comes:

        print(prompt, end="")
        for piece in stream_text(model, tokenizer, prompt, 500, generator=generator):
            print(piece, end="", flush=True)

    The prompt itself is not given out. Pieces are usually one token's text; a character split across tokens
    comes out whole, once its last token is there. ``stop_text`` ends the text once it has appeared, after
    the token that completes it (as ``stop=stop_at_text(tokenizer, stop_text)`` does for ``generate``).
    Sampling options and the eval mode are those of ``generate_text``: for the same seed,
    ``prompt + "".join(stream_text(...))`` is ``generate_text``'s text. A generator: stopping the iteration
    early (``break``, Ctrl-C) keeps every piece already given out, and restores the model's mode.
    """
    stop = None if stop_text is None else stop_at_text(tokenizer, stop_text)
    yield from _new_text(
        model,
        tokenizer,
        prompt,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        stop=stop,
    )


def generate_text(
    model: torch.nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, **generate_options
) -> str:
    """The prompt followed by up to ``max_new_tokens`` generated tokens, as text.

    Runs in eval mode (the model's mode is restored afterwards) and, like ``generate``, without gradients.
    ``generate_options`` are those of ``generate`` (temperature, top_k, top_p, use_cache, generator, stop,
    context_slide). To print the text as it is written, use ``stream_text``.
    """
    return prompt + "".join(_new_text(model, tokenizer, prompt, max_new_tokens, **generate_options))
