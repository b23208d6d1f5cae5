import math
import signal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ds9_utils.generate import (
    _IncrementalDecoder,
    generate,
    generate_text,
    next_token_distribution,
    stop_at_text,
    stream_text,
)
from ds9_utils.model import GPT, BigramLanguageModel, GPTConfig
from ds9_utils.tokenizers import BPETokenizer, CharTokenizer, Tokenizer


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(**{"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides})
    return GPT(config).eval()


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class PieceTokenizer(Tokenizer):
    """A tokenizer whose tokens are strings of several characters, as BPE's are; it also counts how many ids
    it has decoded, to measure how much work a stop condition does."""

    kind = "pieces"

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.ids_decoded = 0

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text):
        ids = []
        while text:  # the longest piece that starts the text
            best = max((i for i, piece in enumerate(self.pieces) if text.startswith(piece)), key=self._length)
            ids.append(best)
            text = text[len(self.pieces[best]) :]
        return ids

    def _length(self, i):
        return len(self.pieces[i])

    def decode(self, ids):
        ids = self._checked_ids(ids)
        self.ids_decoded += len(ids)
        return "".join(self.pieces[i] for i in ids)

    def to_dict(self):
        return {"type": self.kind, "pieces": self.pieces}

    @classmethod
    def from_dict(cls, data):
        return cls(data["pieces"])


def cycling_bigram(tokenizer: Tokenizer, text: str) -> BigramLanguageModel:
    """A bigram model that, greedily, continues every token of ``text`` with the next one (cyclically)."""
    model = BigramLanguageModel(tokenizer.vocab_size)
    ids = tokenizer.encode(text)
    assert len(set(ids)) == len(ids), "each token of the cycle must have one successor"
    with torch.no_grad():
        model.token_embedding_table.weight.zero_()
        for current, following in zip(ids, ids[1:] + ids[:1]):
            model.token_embedding_table.weight[current, following] = 10.0
    return model


def reference_generate(model, idx, max_new_tokens, temperature, context_slide, generator, top_k=None, top_p=None):
    """The textbook sampling loop, written independently (torch.multinomial, torch.cat), with the same
    sliding-window rule as generate."""
    window_start = max(0, idx.size(1) - model.block_size)
    for _ in range(max_new_tokens):
        if idx.size(1) - window_start > model.block_size:
            window_start += context_slide
        logits, _ = model(idx[:, window_start:])
        if temperature == 0:
            next_token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
        elif top_k is None and top_p is None:
            probs = torch.softmax(logits[:, -1, :] / temperature, dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator)
        else:
            probs = next_token_distribution(logits[:, -1, :], temperature, top_k, top_p)
            next_token = torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat((idx, next_token), dim=1)
    return idx


# --- The probability transform --------------------------------------------------------------------------------


logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=30).map(lambda xs: torch.tensor([xs]))


@settings(max_examples=60, deadline=None)
@given(logits=logit_rows, top_k=st.integers(1, 40))
def test_top_k_keeps_the_k_most_likely(logits, top_k):
    probs = next_token_distribution(logits, top_k=top_k)
    assert torch.allclose(probs.sum(), torch.tensor(1.0))
    kept = probs[0] > 0
    kth_largest = logits[0].sort(descending=True).values[min(top_k, logits.size(-1)) - 1]
    assert torch.equal(kept, logits[0] >= kth_largest)  # the k largest (and any tied with the k-th)
    assert torch.allclose(probs[0][kept], torch.softmax(logits[0][kept], dim=-1), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(logits=logit_rows, top_p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, top_p):
    full = torch.softmax(logits[0], dim=-1)
    probs = next_token_distribution(logits, top_p=top_p)[0]
    kept = probs > 0
    assert kept.sum() >= 1
    assert torch.allclose(probs.sum(), torch.tensor(1.0), atol=1e-6)
    assert full[kept].sum() >= top_p - 1e-5  # enough mass
    smallest_kept = full[kept].min()
    if not kept.all():
        assert smallest_kept >= full[~kept].max()  # the most likely ones
    assert full[kept].sum() - smallest_kept < top_p + 1e-5  # and no more than needed
    assert torch.allclose(probs[kept], full[kept] / full[kept].sum(), atol=1e-6)


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[3.0, 1.0, 0.5]])
    assert torch.equal(next_token_distribution(logits, top_p=1e-9), torch.tensor([[1.0, 0.0, 0.0]]))


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])

    def entropy(probs):
        return -(probs * probs.log()).sum().item()

    cold, normal, hot = (next_token_distribution(logits, temperature=t) for t in (0.5, 1.0, 2.0))
    assert torch.allclose(normal, torch.softmax(logits, dim=-1))
    assert entropy(cold) < entropy(normal) < entropy(hot)
    assert torch.equal(next_token_distribution(logits, temperature=0), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_filters_combine():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    probs = next_token_distribution(logits, top_k=3, top_p=0.7)  # top-k renormalises to 4/9, 3/9, 2/9 first
    assert torch.allclose(probs, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        next_token_distribution(torch.zeros(1, 5), **options)
    with pytest.raises(ValueError, match=message):
        generate(tiny_gpt(), torch.zeros(1, 1, dtype=torch.long), 3, **options)


@pytest.mark.parametrize(
    "prompt, max_new_tokens, options, message",
    [
        (torch.zeros(1, 1, dtype=torch.long), -1, {}, "max_new_tokens"),
        (torch.zeros(1, 0, dtype=torch.long), 3, {}, "empty"),
        (torch.zeros(3, dtype=torch.long), 3, {}, "batch, time"),
        (torch.zeros(1, 2), 3, {}, "LongTensor"),
        (torch.zeros(1, 1, dtype=torch.long), 3, {"context_slide": 0}, "context_slide"),
        (torch.zeros(1, 1, dtype=torch.long), 3, {"context_slide": 9}, "context_slide"),
        (torch.zeros(1, 1, dtype=torch.long), 3, {"stop": [[]]}, "non-empty"),
    ],
)
def test_bad_generate_arguments(prompt, max_new_tokens, options, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_gpt(), prompt, max_new_tokens, **options)


# --- Generation -----------------------------------------------------------------------------------------------


def test_returns_prompt_plus_new_tokens():
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate(model, prompt, 5, generator=seeded())
    assert out.shape == (2, 8) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt)
    assert out.min() >= 0 and out.max() < model.config.vocab_size
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_seeded_sampling_is_reproducible():
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3]])
    first = generate(model, prompt, 20, generator=seeded(5))
    assert torch.equal(first, generate(model, prompt, 20, generator=seeded(5)))
    assert not torch.equal(first, generate(model, prompt, 20, generator=seeded(6)))


def test_greedy_picks_the_most_likely_token_every_step():
    model = tiny_gpt()
    out = generate(model, torch.tensor([[1, 2]]), 12, temperature=0, context_slide=1)
    assert torch.equal(out, generate(model, torch.tensor([[1, 2]]), 12, temperature=0, top_k=3, context_slide=1))
    for t in range(2, out.size(1)):  # past block_size the context is the last block_size tokens
        context = out[:, max(0, t - model.block_size) : t]
        assert out[0, t] == model(context)[0][0, -1].argmax()


@pytest.mark.parametrize("attention", ["fast", "explicit"])
@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "none"])
def test_cache_gives_the_same_tokens_as_no_cache_past_block_size(positional, attention):
    model = tiny_gpt(positional=positional, attention=attention)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for slide in (1, 3, model.block_size, None):
        cached = generate(model, prompt, 30, generator=seeded(), context_slide=slide)
        uncached = generate(model, prompt, 30, generator=seeded(), context_slide=slide, use_cache=False)
        assert torch.equal(cached, uncached), f"context_slide={slide}"


@pytest.mark.parametrize("slide", [1, 2, 8])
def test_generation_matches_the_textbook_loop(slide):
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])  # longer than block_size: cropped
    expected = reference_generate(model, prompt, 25, temperature=0.8, context_slide=slide, generator=seeded(3))
    for use_cache in (True, False):
        out = generate(
            model, prompt, 25, temperature=0.8, context_slide=slide, use_cache=use_cache, generator=seeded(3)
        )
        assert torch.equal(out, expected)


def test_default_slide_is_a_quarter_block():
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3]])
    expected = reference_generate(model, prompt, 25, temperature=1.0, context_slide=2, generator=seeded(4))
    assert torch.equal(generate(model, prompt, 25, generator=seeded(4)), expected)


def test_bigram_models_generate_too():
    tokenizer = CharTokenizer.from_text("abcd")
    model = cycling_bigram(tokenizer, "abcd")
    assert generate_text(model, tokenizer, "b", 6, temperature=0) == "bcdabcd"
    assert len(generate_text(model, tokenizer, "a", 50, generator=seeded())) == 51


# --- Stopping -------------------------------------------------------------------------------------------------


def test_stop_at_text_ends_after_the_stop_text():
    tokenizer = CharTokenizer.from_text("Hi!\n[Ops]")
    model = cycling_bigram(tokenizer, "Hi!\n[Ops]")
    stop = stop_at_text(tokenizer, "\n[")
    # the prompt already contains the stop text: only new text counts
    text = generate_text(model, tokenizer, "\n[O", 100, temperature=0, stop=stop)
    assert text == "\n[Ops]Hi!\n["


def test_stop_sequences_of_token_ids_and_callables():
    tokenizer = CharTokenizer.from_text("abcd")
    model = cycling_bigram(tokenizer, "abcd")
    prompt = torch.tensor([tokenizer.encode("a")])
    out = generate(model, prompt, 100, temperature=0, stop={tuple(tokenizer.encode("da")), (7, 7)})
    assert tokenizer.decode(out[0]) == "abcda"
    out = generate(model, prompt, 100, temperature=0, stop=lambda new_tokens: new_tokens.size(1) == 6)
    assert out.size(1) == 7


@pytest.mark.parametrize("stop", ["\n", ["\n"], ("ab", "c")])
def test_stop_given_as_text_says_how_to_give_it(stop):
    tokenizer = CharTokenizer.from_text("abc\n")
    model = cycling_bigram(tokenizer, "abc\n")
    with pytest.raises(ValueError, match="token ids, not text.*stop_at_text"):
        generate(model, torch.tensor([tokenizer.encode("a")]), 10, temperature=0, stop=stop)


def test_a_batch_stops_when_every_row_has_stopped():
    tokenizer = CharTokenizer.from_text("abcd")
    model = cycling_bigram(tokenizer, "abcd")
    prompt = torch.tensor([tokenizer.encode("a"), tokenizer.encode("c")])
    out = generate(model, prompt, 100, temperature=0, stop=[tokenizer.encode("ab")])
    # row 1 makes "ab" after 3 new tokens (c -> d a b). Row 0's first "ab" starts in the prompt, which does
    # not count, so it stops after 5 (a -> b c d a b); row 1 kept sampling until then.
    assert [tokenizer.decode(row) for row in out] == ["abcdab", "cdabcd"]


# --- generate_text --------------------------------------------------------------------------------------------


def test_generate_text_round_trip_and_mode():
    tokenizer = CharTokenizer.from_text("KIRA: Odo!\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    model.train()
    text = generate_text(model, tokenizer, "KIRA:", 40, generator=seeded(), top_k=5)
    assert model.training  # restored
    assert text.startswith("KIRA:") and len(text) == 45
    assert set(text) <= set(tokenizer.chars)
    # eval mode inside: same seed, same text, with or without the cache
    again = generate_text(model, tokenizer, "KIRA:", 40, generator=seeded(), top_k=5, use_cache=False)
    assert text == again


def test_generate_text_rejects_bad_prompts():
    tokenizer = CharTokenizer.from_text("abc")
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="empty"):
        generate_text(model, tokenizer, "", 5)
    with pytest.raises(ValueError, match="'z'"):
        generate_text(model, tokenizer, "abz", 5)


def test_unused_probability_is_not_sampled():
    # with top_k=1 sampling is greedy whatever the seed
    model = tiny_gpt()
    prompt = torch.tensor([[3, 1]])
    greedy = generate(model, prompt, 10, temperature=0)
    for seed in range(3):
        assert torch.equal(generate(model, prompt, 10, top_k=1, generator=seeded(seed)), greedy)
    assert math.isclose(next_token_distribution(torch.randn(1, 11), top_k=1).max().item(), 1.0)


# --- Sampling settings, the cache and multi-character tokens ----------------------------------------------------


SAMPLING_SETTINGS = [
    {"temperature": 1.0},
    {"temperature": 0.7},
    {"temperature": 0},
    {"temperature": 1.0, "top_k": 3},
    {"temperature": 1.0, "top_p": 0.8},
    {"temperature": 1.3, "top_k": 5, "top_p": 0.9},
]


@pytest.mark.parametrize("options", SAMPLING_SETTINGS, ids=str)
def test_every_sampling_setting_draws_the_textbook_tokens_with_and_without_the_cache(options):
    # the reference draws with torch.multinomial: generate draws the very same tokens for the same seed
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    expected = reference_generate(model, prompt, 30, context_slide=2, generator=seeded(7), **options)
    for use_cache in (True, False):
        out = generate(model, prompt, 30, context_slide=2, use_cache=use_cache, generator=seeded(7), **options)
        assert torch.equal(out, expected), f"use_cache={use_cache}"


def bpe_and_gpt() -> tuple[BPETokenizer, GPT]:
    """A byte-level BPE whose tokens hold several characters (or half of one: 'é' is two bytes), and an
    untrained GPT over it, so that samples include broken UTF-8 too."""
    tokenizer = BPETokenizer().train("café au lait, café noir! Kira: Odo? " * 10, vocab_size=280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16))
    return tokenizer, model


@pytest.mark.parametrize("options", SAMPLING_SETTINGS, ids=str)
def test_multi_character_tokens_give_the_same_text_with_and_without_the_cache(options):
    tokenizer, model = bpe_and_gpt()
    texts = [
        generate_text(model, tokenizer, "café", 60, use_cache=use_cache, generator=seeded(2), **options)
        for use_cache in (True, False)
    ]
    assert texts[0] == texts[1]
    out = generate(model, torch.tensor([tokenizer.encode("café")]), 60, generator=seeded(2), **options)
    assert texts[0] == tokenizer.decode(out[0])  # the streamed pieces add up to the decoded tokens


def test_generated_tokens_can_be_trained_on():
    # generation runs in inference mode; what it returns must still work with autograd (feedback.py does)
    model = tiny_gpt().train()
    out = generate(model, torch.tensor([[1, 2]]), 6, generator=seeded())
    _, loss = model(out[:, :-1], out[:, 1:])
    loss.backward()
    assert model.lm_head.weight.grad is not None


def test_out_of_vocabulary_prompts_are_rejected():
    model = tiny_gpt()  # vocab_size 11
    for prompt in (torch.tensor([[1, 11]]), torch.tensor([[-1, 2]])):
        for use_cache in (True, False):
            with pytest.raises(ValueError, match=r"Token ids must be in 0\.\.10"):
                generate(model, prompt, 3, use_cache=use_cache)
    with pytest.raises(ValueError, match=r"Token ids must be in 0\.\.3"):
        generate(BigramLanguageModel(4), torch.tensor([[4]]), 3)


# --- Stopping at a text, in linear time ---------------------------------------------------------------------------


PIECES = ["KI", "RA", ":", " O", "do", "!\n", "\n[", "Ops]", "X"]


def test_stop_at_text_straddling_tokens_ends_after_the_token_that_completes_it():
    tokenizer = PieceTokenizer(PIECES)
    model = cycling_bigram(tokenizer, "KIRA: Odo!\n")  # KI RA : ␠O do !⏎, then again
    # "A: O" starts inside "RA" and ends inside " O"; the text ends with the token that completes it
    assert generate_text(model, tokenizer, "do", 50, temperature=0, stop=stop_at_text(tokenizer, "A: O")) == (
        "do!\nKIRA: O"
    )
    assert generate_text(model, tokenizer, "do", 50, temperature=0, stop=stop_at_text(tokenizer, "!\nK")) == ("do!\nKI")
    # the same tokens as matching the whole decoded text at every step, the quadratic way
    whole_text = lambda new_tokens: all("Odo!" in tokenizer.decode(row) for row in new_tokens.tolist())
    prompt = torch.tensor([tokenizer.encode("KI"), tokenizer.encode("do")])
    expected = generate(model, prompt, 50, temperature=0, stop=whole_text)
    assert torch.equal(generate(model, prompt, 50, temperature=0, stop=stop_at_text(tokenizer, "Odo!")), expected)


def test_stop_at_text_waits_for_a_character_split_across_tokens():
    tokenizer = BPETokenizer()  # bytes only: "é" is two tokens
    model = cycling_bigram(tokenizer, "café!")
    text = generate_text(model, tokenizer, "c", 50, temperature=0, stop=stop_at_text(tokenizer, "é"))
    assert text == "café"
    assert generate_text(model, tokenizer, "c", 50, temperature=0, stop=stop_at_text(tokenizer, "é!c")) == "café!c"


def test_a_stop_condition_can_be_used_for_several_calls():
    tokenizer = PieceTokenizer(PIECES)
    model = cycling_bigram(tokenizer, "KIRA: Odo!\n")
    stop = stop_at_text(tokenizer, "Odo")
    first = generate_text(model, tokenizer, "KI", 50, temperature=0, stop=stop)
    assert first == "KIRA: Odo"
    assert generate_text(model, tokenizer, "KI", 50, temperature=0, stop=stop) == first


@pytest.mark.parametrize("length", [500, 2000])
def test_stop_at_text_decodes_each_token_a_bounded_number_of_times(length):
    tokenizer = PieceTokenizer(PIECES)
    model = cycling_bigram(tokenizer, "KIRA: Odo!\n")
    stop = stop_at_text(tokenizer, "never written")
    out = generate(model, torch.tensor([tokenizer.encode("KI")]), length, temperature=0, stop=stop)
    assert out.size(1) == length + 1
    # decoding the whole text at every step would decode length * (length + 1) / 2 ids
    assert tokenizer.ids_decoded <= 4 * length


byte_tokens = st.lists(
    st.sampled_from([0x61, 0x20, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x80, 0xFF]),
    max_size=_IncrementalDecoder.max_held_back - 1,
)


@settings(max_examples=200, deadline=None)
@given(ids=byte_tokens)
def test_the_incremental_decoder_adds_up_to_the_whole_decode(ids):
    # any bytes, broken UTF-8 included: the pieces and what is flushed at the end are the decoded text
    tokenizer = BPETokenizer()
    decoder = _IncrementalDecoder(tokenizer)
    pieces = [decoder.add(token_id) for token_id in ids]
    assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids)
    if ids and ids[-1] < 0x80:  # a character that is complete is given out at once
        assert "".join(pieces) == tokenizer.decode(ids)


def test_the_incremental_decoder_gives_out_a_long_broken_run():
    tokenizer = BPETokenizer()
    decoder = _IncrementalDecoder(tokenizer)
    pieces = [decoder.add(0xE2) for _ in range(40)]  # 40 starts of a three-byte character, never finished
    assert "".join(pieces) + decoder.flush() == "\ufffd" * 40 == tokenizer.decode([0xE2] * 40)
    assert len(pieces[-1]) == 0 and len("".join(pieces)) >= 32  # held back at most max_held_back at a time


# --- Streaming ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_text", [None, "a", "é"])
@pytest.mark.parametrize("make", ["char", "bpe"])
def test_stream_text_adds_up_to_generate_text(make, stop_text):
    if make == "char":
        tokenizer = CharTokenizer.from_text("abcdé!\n")
        model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    else:
        tokenizer, model = bpe_and_gpt()
    options = {"temperature": 0.9, "top_k": 20}
    pieces = list(stream_text(model, tokenizer, "ab", 80, generator=seeded(4), stop_text=stop_text, **options))
    stop = None if stop_text is None else stop_at_text(tokenizer, stop_text)
    expected = generate_text(model, tokenizer, "ab", 80, generator=seeded(4), stop=stop, **options)
    assert pieces and all(pieces)
    assert "ab" + "".join(pieces) == expected
    if stop_text is not None:  # it ends with the token that completes the stop text
        prompt = tokenizer.encode("ab")
        out = generate(model, torch.tensor([prompt]), 80, generator=seeded(4), stop=stop, **options)[0].tolist()
        new = out[len(prompt) :]
        assert stop_text in tokenizer.decode(new) and stop_text not in tokenizer.decode(new[:-1])


def test_stream_text_gives_out_text_before_it_finishes():
    tokenizer = CharTokenizer.from_text("abcd")
    model = cycling_bigram(tokenizer, "abcd")
    stream = stream_text(model, tokenizer, "a", 10**6, temperature=0)
    assert [next(stream) for _ in range(5)] == ["b", "c", "d", "a", "b"]
    stream.close()


def test_ctrl_c_while_streaming_keeps_the_pieces_and_the_model_mode():
    tokenizer = CharTokenizer.from_text("abcdefgh")
    model = tiny_gpt(vocab_size=tokenizer.vocab_size).train()
    full = generate_text(model, tokenizer, "ab", 40, generator=seeded(3))
    forward_calls = 0

    def press_ctrl_c(module, inputs, output):
        nonlocal forward_calls
        forward_calls += 1
        if forward_calls == 12:
            signal.raise_signal(signal.SIGINT)  # a real SIGINT, turned into KeyboardInterrupt by Python

    handle = model.lm_head.register_forward_hook(press_ctrl_c)  # runs once per step, cached or not
    # Python's own Ctrl-C handler, even when the tests run in the background (`pytest &`), where SIGINT starts ignored
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    pieces = []
    try:
        with pytest.raises(KeyboardInterrupt):
            for piece in stream_text(model, tokenizer, "ab", 40, generator=seeded(3)):
                pieces.append(piece)
    finally:
        handle.remove()
        signal.signal(signal.SIGINT, previous_handler)
    assert len(pieces) == 11  # the twelfth step was interrupted
    assert full.startswith("ab" + "".join(pieces))
    assert model.training  # restored
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_stream_text_rejects_bad_arguments():
    tokenizer = CharTokenizer.from_text("abc")
    model = tiny_gpt(vocab_size=tokenizer.vocab_size)
    for kwargs, message in [({"prompt": ""}, "empty"), ({"stop_text": ""}, "non-empty"), ({"top_p": 2}, "top_p")]:
        arguments = {"prompt": "ab", **kwargs}
        with pytest.raises(ValueError, match=message):
            list(stream_text(model, tokenizer, max_new_tokens=5, **arguments))
