import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ds9_utils.generate import generate, generate_text, next_token_distribution, stop_at_text
from ds9_utils.model import GPT, BigramLanguageModel, GPTConfig
from ds9_utils.tokenizers import CharTokenizer


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(**{"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides})
    return GPT(config).eval()


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cycling_bigram(tokenizer: CharTokenizer, text: str) -> BigramLanguageModel:
    """A bigram model that, greedily, continues every character of ``text`` with the next one (cyclically)."""
    model = BigramLanguageModel(tokenizer.vocab_size)
    ids = tokenizer.encode(text)
    with torch.no_grad():
        model.token_embedding_table.weight.zero_()
        for current, following in zip(ids, ids[1:] + ids[:1]):
            model.token_embedding_table.weight[current, following] = 10.0
    return model


def reference_generate(model, idx, max_new_tokens, temperature, context_slide, generator):
    """The textbook sampling loop, written independently, with the same sliding-window rule as generate."""
    window_start = max(0, idx.size(1) - model.block_size)
    for _ in range(max_new_tokens):
        if idx.size(1) - window_start > model.block_size:
            window_start += context_slide
        logits, _ = model(idx[:, window_start:])
        probs = torch.softmax(logits[:, -1, :] / temperature, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
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
