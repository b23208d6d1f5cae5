import math

import pytest
import torch

from ds9_utils.model import (
    GPT,
    BigramLanguageModel,
    Block,
    CausalSelfAttention,
    FeedForward,
    GPTConfig,
    Head,
    KVCache,
    MultiHeadAttention,
    ReLUSquared,
    RMSNorm,
    rotary_angles,
    rotate,
    sinusoidal_positions,
)

#: The modern recipe's architecture (the ``cpu`` preset's options) on a tiny model.
MODERN = dict(positional="rotary", norm="rms", activation="relu2", qk_norm=True, zero_init=True, tie_embeddings=False)


def tiny_config(**overrides) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 17, "block_size": 12, "n_layer": 2, "n_head": 2, "n_embd": 16, **overrides})


def random_tokens(config: GPTConfig, batch: int = 3, length: int | None = None, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, length or config.block_size), generator=generator)


def seeded_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A GPT with random weights everywhere: zero-initialised layers get random values too, so that every
    path of the network changes its output (a zero projection would hide a bug behind it)."""
    torch.manual_seed(seed)
    model = GPT(config)
    if config.zero_init:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.3)
    return model


# --- Bigram ---------------------------------------------------------------------------------------------------


def test_bigram_shapes_and_loss():
    model = BigramLanguageModel(vocab_size=9)
    idx = torch.randint(0, 9, (4, 7))
    logits, loss = model(idx)
    assert logits.shape == (4, 7, 9) and loss is None
    logits, loss = model(idx, idx)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), idx.reshape(-1))
    assert torch.allclose(loss, expected)
    # the prediction at a position depends only on the token there
    assert torch.equal(logits[0, 3], model.token_embedding_table.weight[idx[0, 3]])


# --- Teaching attention classes -------------------------------------------------------------------------------


def test_head_is_causal_and_averages_values():
    torch.manual_seed(0)
    head = Head(n_embd=8, head_size=4, block_size=6)
    x = torch.randn(2, 6, 8)
    out = head(x)
    assert out.shape == (2, 6, 4)
    # the first position can only attend to itself: its output is its own value
    assert torch.allclose(out[:, 0], head.value(x[:, 0]), atol=1e-6)
    # changing the future leaves the past unchanged
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, 8)
    assert torch.allclose(head(changed)[:, :4], out[:, :4], atol=1e-6)
    assert "tril" in dict(head.named_buffers())


def test_multi_head_attention_matches_the_batched_gpt_attention():
    config = tiny_config(n_embd=12, n_head=3)
    torch.manual_seed(0)
    batched = CausalSelfAttention(config)
    by_heads = MultiHeadAttention(config.n_embd, config.n_head, config.block_size)
    head_size = config.n_embd // config.n_head
    query_w, key_w, value_w = batched.qkv.weight.detach().split(config.n_embd, dim=0)
    with torch.no_grad():
        for h, head in enumerate(by_heads.heads):
            rows = slice(h * head_size, (h + 1) * head_size)
            head.query.weight.copy_(query_w[rows])
            head.key.weight.copy_(key_w[rows])
            head.value.weight.copy_(value_w[rows])
        by_heads.proj.weight.copy_(batched.proj.weight)
    x = torch.randn(2, config.block_size, config.n_embd)
    assert torch.allclose(by_heads(x), batched(x), atol=1e-6)


def test_multi_head_attention_rejects_uneven_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(n_embd=10, n_head=3, block_size=4)


def test_feed_forward_and_block_keep_the_shape():
    x = torch.randn(2, 5, 16)
    assert FeedForward(16, dropout=0.0, bias=True)(x).shape == x.shape
    assert Block(tiny_config())(x).shape == x.shape


# --- Config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"n_embd": 10, "n_head": 3}, "divisible"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"block_size": 2.5}, "block_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"positional": "alibi"}, "positional"),
        ({"attention": "flash"}, "attention"),
        ({"norm": "batch"}, "norm"),
        ({"activation": "swish"}, "activation"),
        ({"positional": "rotary", "n_embd": 18, "n_head": 6}, "even"),
    ],
)
def test_invalid_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# --- GPT ------------------------------------------------------------------------------------------------------


def test_forward_shapes_and_loss():
    config = tiny_config()
    model = seeded_gpt(config)
    idx = random_tokens(config, batch=3, length=5)
    logits, loss = model(idx)
    assert logits.shape == (3, 5, config.vocab_size) and loss is None
    targets = random_tokens(config, batch=3, length=5, seed=1)
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))
    assert loss.shape == () and torch.allclose(loss, expected)


def test_targets_of_minus_one_are_ignored():
    config = tiny_config()
    model = seeded_gpt(config)
    idx = random_tokens(config, batch=2, length=6)
    targets = random_tokens(config, batch=2, length=6, seed=1)
    masked = targets.clone()
    masked[:, :3] = -1
    logits, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(
        logits[:, 3:].reshape(-1, config.vocab_size), targets[:, 3:].reshape(-1)
    )
    assert torch.allclose(loss, expected)


def test_initial_loss_is_close_to_uniform_guessing():
    config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)
    model = seeded_gpt(config)
    _, loss = model(random_tokens(config, batch=8), random_tokens(config, batch=8, seed=1))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_weight_tying_and_parameter_count():
    config = tiny_config()
    model = seeded_gpt(config)
    assert model.token_embedding.weight is model.lm_head.weight
    unique_total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters(non_embedding=False) == unique_total
    assert model.num_parameters() == unique_total - config.block_size * config.n_embd
    # a gradient through the output layer reaches the embedding table: it is one tensor
    _, loss = model(random_tokens(config), random_tokens(config, seed=1))
    loss.backward()
    assert model.token_embedding.weight.grad is not None


def test_gpt2_initialisation():
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=8, n_head=4, n_embd=128)
    model = seeded_gpt(config)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected_residual = 0.02 / math.sqrt(2 * config.n_layer)
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(expected_residual, rel=0.1)
        assert block.ffwd.proj.weight.std().item() == pytest.approx(expected_residual, rel=0.1)


def test_too_long_sequences_are_rejected():
    config = tiny_config()
    model = seeded_gpt(config)
    with pytest.raises(ValueError, match="block_size is 12"):
        model(random_tokens(config, length=13))
    cache = model.new_kv_cache()
    model(random_tokens(config, batch=1, length=10), kv_cache=cache)
    with pytest.raises(ValueError, match="after 10 cached tokens"):
        model(random_tokens(config, batch=1, length=3), kv_cache=cache)


def test_bad_inputs_are_rejected():
    model = seeded_gpt(tiny_config())
    with pytest.raises(ValueError, match="batch, time"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="layers"):
        model(torch.tensor([[1]]), kv_cache=KVCache(n_layer=5, capacity=12))


VARIANTS = [{"positional": "learned"}, {"positional": "sinusoidal"}, {"positional": "none"}, MODERN]
VARIANT_IDS = ["learned", "sinusoidal", "none", "modern"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_explicit_and_fast_attention_agree(variant):
    fast = seeded_gpt(tiny_config(**variant, attention="fast"))
    explicit = GPT(tiny_config(**variant, attention="explicit"))
    explicit.load_state_dict(fast.state_dict())
    idx, targets = random_tokens(fast.config), random_tokens(fast.config, seed=1)
    fast_logits, fast_loss = fast(idx, targets)
    explicit_logits, explicit_loss = explicit(idx, targets)
    assert torch.allclose(fast_logits, explicit_logits, atol=1e-5)
    fast_loss.backward()
    explicit_loss.backward()
    assert torch.allclose(fast.blocks[0].attn.qkv.weight.grad, explicit.blocks[0].attn.qkv.weight.grad, atol=1e-6)


@pytest.mark.parametrize("attention", ["fast", "explicit"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kv_cache_gives_the_same_logits_as_a_full_forward(variant, attention):
    config = tiny_config(**variant, attention=attention)
    model = seeded_gpt(config).eval()
    idx = random_tokens(config, batch=2)
    full_logits, _ = model(idx)
    cache = model.new_kv_cache()
    # a prompt of 4 tokens, then 3 at once (offset causal mask), then one at a time
    pieces = [model(idx[:, :4], kv_cache=cache)[0], model(idx[:, 4:7], kv_cache=cache)[0]]
    pieces += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(7, config.block_size)]
    assert cache.length == config.block_size
    assert torch.allclose(torch.cat(pieces, dim=1), full_logits, atol=1e-5)


@pytest.mark.parametrize("attention", ["fast", "explicit"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_decode_step_gives_the_logits_of_the_general_cached_path(variant, attention):
    config = tiny_config(**variant, attention=attention)
    model = seeded_gpt(config).eval()
    idx = random_tokens(config, batch=2)
    full_logits, _ = model(idx)
    cache, general_cache = model.new_kv_cache(), model.new_kv_cache()
    model(idx[:, :3], kv_cache=cache)
    model(idx[:, :3], kv_cache=general_cache)
    for t in range(3, config.block_size):
        logits = model.decode_step(idx[:, t], cache)
        assert torch.equal(logits, model(idx[:, t : t + 1], kv_cache=general_cache)[0][:, -1])
        assert torch.allclose(logits, full_logits[:, t], atol=1e-5)
    assert cache.length == config.block_size
    with pytest.raises(ValueError, match="KV cache is full"):
        model.decode_step(idx[:, 0], cache)


def test_decode_step_in_training_mode_applies_dropout():
    config = tiny_config(dropout=0.5)
    model = seeded_gpt(config).eval()
    prompt = random_tokens(config, batch=1, length=3)
    caches = [model.new_kv_cache(), model.new_kv_cache()]
    for cache in caches:
        model(prompt, kv_cache=cache)
    model.train()
    first, second = (model.decode_step(torch.tensor([4]), cache) for cache in caches)
    assert not torch.equal(first, second)  # the same step twice, different dropout masks


def test_kv_cache_reset_and_batch_change():
    config = tiny_config()
    model = seeded_gpt(config).eval()
    cache = model.new_kv_cache()
    model(random_tokens(config, batch=2, length=5), kv_cache=cache)
    with pytest.raises(ValueError, match="batch size 2"):
        model(random_tokens(config, batch=3, length=1), kv_cache=cache)
    cache.reset()
    idx = random_tokens(config, batch=3, length=5, seed=3)
    assert torch.allclose(model(idx, kv_cache=cache)[0], model(idx)[0], atol=1e-6)


def test_sinusoidal_positions_follow_the_formula_and_are_not_learned():
    table = sinusoidal_positions(block_size=50, n_embd=16)
    pos, i = 37, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-5)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-5)
    assert sinusoidal_positions(block_size=4, n_embd=7).shape == (4, 7)
    learned, sinusoidal, none = (seeded_gpt(tiny_config(positional=p)) for p in ("learned", "sinusoidal", "none"))
    table_size = learned.config.block_size * learned.config.n_embd
    assert learned.num_parameters(non_embedding=False) - sinusoidal.num_parameters(non_embedding=False) == table_size
    assert sinusoidal.num_parameters(non_embedding=False) == none.num_parameters(non_embedding=False)
    assert "position_table" not in sinusoidal.state_dict()  # rebuilt from the config, not saved


@pytest.mark.parametrize(
    "positional, order_matters", [("none", False), ("learned", True), ("sinusoidal", True), ("rotary", True)]
)
def test_without_positions_the_model_cannot_tell_order(positional, order_matters):
    # one layer: the last position sees the earlier tokens only through attention, which without position
    # information treats them as a set
    model = seeded_gpt(tiny_config(n_layer=1, positional=positional)).eval()
    idx = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    shuffled = torch.tensor([[6, 4, 1, 5, 3, 2, 7]])
    same = torch.allclose(model(idx)[0][:, -1], model(shuffled)[0][:, -1], atol=1e-6)
    assert same != order_matters


def test_attention_maps():
    config = tiny_config(dropout=0.2)
    model = seeded_gpt(config).train()
    idx = random_tokens(config, batch=2, length=7)
    maps = model.attention_maps(idx)
    assert model.training  # the mode is restored
    assert len(maps) == config.n_layer
    for weights in maps:
        assert weights.shape == (2, config.n_head, 7, 7)
        assert torch.allclose(weights.sum(dim=-1), torch.ones(2, config.n_head, 7))
        assert torch.all(weights.triu(diagonal=1) == 0)  # nothing looks at the future
    # the first layer's map is softmax(q k^T / sqrt(d)) of its own queries and keys
    first = model.blocks[0]
    x = model.token_embedding(idx) + model.position_embedding(torch.arange(7))
    q, k, _ = first.attn.qkv(first.ln_1(x)).split(config.n_embd, dim=2)
    q0 = q[..., : config.n_embd // config.n_head]
    k0 = k[..., : config.n_embd // config.n_head]
    scores = q0 @ k0.transpose(-2, -1) / math.sqrt(config.n_embd // config.n_head)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(maps[0][:, 0], torch.softmax(scores, dim=-1), atol=1e-6)


def test_dropout_only_in_training_mode():
    config = tiny_config(dropout=0.5)
    model = seeded_gpt(config)
    idx = random_tokens(config)
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_a_tiny_gpt_learns_a_pattern():
    config = GPTConfig(vocab_size=5, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = seeded_gpt(config)
    data = torch.tensor([0, 1, 2, 3, 4] * 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(data) - config.block_size - 1, (8,))
        x = torch.stack([data[s : s + config.block_size] for s in starts])
        y = torch.stack([data[s + 1 : s + config.block_size + 1] for s in starts])
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_out_of_vocabulary_ids_raise_one_clear_error():
    config = tiny_config()  # vocab_size 17
    model = seeded_gpt(config).eval()
    for bad in (torch.tensor([[1, 17]]), torch.tensor([[-1, 2]])):
        with pytest.raises(ValueError, match=r"Token ids must be in 0\.\.16 .*got ids from -?\d+ to \d+"):
            model(bad)
    cache = model.new_kv_cache()
    model(torch.tensor([[1, 2]]), kv_cache=cache)
    with pytest.raises(ValueError, match="Token ids must be in"):  # several tokens after cached ones
        model(torch.tensor([[3, 40]]), kv_cache=cache)
    with pytest.raises(ValueError, match=r"Token ids must be in 0\.\.8"):
        BigramLanguageModel(vocab_size=9)(torch.tensor([[9]]))
    with pytest.raises(ValueError, match="Token ids must be in"):
        model.attention_maps(torch.tensor([[1, 99]]))


# --- The modern recipe's options ------------------------------------------------------------------------------


def test_rotary_attention_scores_depend_only_on_the_distance():
    cos, sin = rotary_angles(block_size=40, head_size=8)
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=generator), torch.randn(8, generator=generator)

    def score(query_position: int, key_position: int) -> float:
        turned_q = rotate(q[None], cos[query_position : query_position + 1], sin[query_position : query_position + 1])
        turned_k = rotate(k[None], cos[key_position : key_position + 1], sin[key_position : key_position + 1])
        return (turned_q @ turned_k.T).item()

    assert score(9, 4) == pytest.approx(score(35, 30), abs=1e-5)  # five apart, wherever they are
    assert score(9, 4) != pytest.approx(score(9, 2), abs=1e-3)
    assert score(3, 3) == pytest.approx((q @ k).item(), abs=1e-5)  # no distance: the plain dot product
    assert rotate(q[None], cos[5:6], sin[5:6]).norm() == pytest.approx(q.norm().item())  # a turn keeps lengths


def test_rms_norm_divides_by_the_root_mean_square_in_float32():
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    if hasattr(torch.nn, "RMSNorm"):  # the library's own, PyTorch 2.4 and later
        reference = torch.nn.RMSNorm(6, eps=norm.eps)
        with torch.no_grad():
            reference.weight.copy_(norm.weight)
        assert torch.allclose(norm(x), reference(x), atol=1e-6)


def test_relu_squared_is_zero_below_and_a_parabola_above():
    z = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    assert torch.equal(ReLUSquared()(z), torch.tensor([0.0, 0.0, 0.0, 0.25, 9.0]))


def test_zero_init_starts_every_block_as_the_identity_and_predicts_uniformly():
    torch.manual_seed(0)
    model = GPT(tiny_config(**MODERN))
    idx = random_tokens(model.config)
    logits, loss = model(idx, random_tokens(model.config, seed=1))
    assert torch.equal(logits, torch.zeros_like(logits))
    assert loss.item() == pytest.approx(math.log(model.config.vocab_size))
    x = model.token_embedding(idx)
    assert torch.equal(model.blocks[0](x), x)


def test_an_untied_head_has_its_own_weights_and_is_not_counted_as_embedding():
    tied, untied = seeded_gpt(tiny_config()), seeded_gpt(tiny_config(tie_embeddings=False))
    assert tied.token_embedding.weight is tied.lm_head.weight
    assert untied.token_embedding.weight is not untied.lm_head.weight
    embedding = untied.token_embedding.weight.numel()
    assert untied.num_parameters(non_embedding=False) == tied.num_parameters(non_embedding=False) + embedding
    assert untied.num_parameters() == tied.num_parameters()  # the lookup table is left out, the head counts


def test_qk_norm_keeps_attention_scores_bounded_however_large_the_weights():
    model = seeded_gpt(tiny_config(qk_norm=True, n_layer=1))
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(1000.0)
    x = model.token_embedding(random_tokens(model.config))
    q, k, _ = model.blocks[0].attn._queries_keys_values(model.blocks[0].ln_1(x))
    head_size = model.config.n_embd // model.config.n_head
    # each normalised vector has length sqrt(head_size) times its gains (1 at the start)
    assert (q @ k.transpose(-2, -1)).abs().max() <= head_size * 1.001
