"""The language models of the course, from a bigram table to a GPT.

Read it top to bottom, in the order the notebooks build it:

1. ``BigramLanguageModel``: each character predicts the next from a table of logits, nothing more.
2. ``Head`` and ``MultiHeadAttention``: self-attention written out the way it is taught, one ``Linear`` per
   head and an explicit masked softmax.
3. ``GPTConfig``, ``CausalSelfAttention``, ``FeedForward``, ``Block`` and ``GPT``: the same ideas in the
   compact, fast form of nanoGPT (all heads in one matrix multiply, fused attention), plus a ``KVCache`` so
   generation processes one new token per step instead of the whole context again (``GPT.decode_step``).
4. The modern recipe's architecture, each change one option of ``GPTConfig`` that the classic GPT-2 of
   chapters 05-08 leaves off: ``RMSNorm`` in place of LayerNorm, rotary positions (``rotate``) in place of a
   position table, QK-norm, the ReLU² activation, zero-initialised output projections and an untied head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

POSITIONAL_OPTIONS = ("learned", "sinusoidal", "rotary", "none")
ATTENTION_OPTIONS = ("fast", "explicit")
ABSOLUTE_POSITIONS = ("learned", "sinusoidal")  # added to the token vectors; "rotary" works inside attention
NORM_OPTIONS = ("layer", "rms")
ACTIVATION_OPTIONS = ("gelu", "relu2")


def check_token_ids(idx: torch.Tensor, vocab_size: int, what: str = "Token ids") -> None:
    """Raise one clear error for token ids that have no row in the embedding table, instead of PyTorch's
    IndexError (or, on a GPU, a device-side assert). One min/max over the whole batch.

    Skipped inside ``torch.compile``: reading the min and max back is a graph break (the compiled model falls
    apart into two graphs) and, on a GPU, a wait for the device at every step. ``train`` checks its data once,
    before the first step, instead.
    """
    if _compiling():
        return
    low, high = (int(value) for value in torch.aminmax(idx))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{what} must be in 0..{vocab_size - 1} (the model's vocabulary), got ids from {low} to {high}; "
            "encode the text with the tokenizer the model was trained with."
        )


def _compiling() -> bool:
    """True while ``torch.compile`` traces the code (PyTorch 2.3 and later can tell; before, always False)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


class BigramLanguageModel(nn.Module):
    """The simplest language model: a table whose row ``i`` holds the logits of the character after ``i``."""

    #: How many tokens of context the next prediction depends on: only the last one.
    block_size = 1

    def __init__(self, vocab_size: int):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {vocab_size}.")
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for every position, and the cross-entropy loss when targets are given."""
        check_token_ids(idx, self.token_embedding_table.num_embeddings)
        logits = self.token_embedding_table(idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


# --- Self-attention as it is taught -------------------------------------------------------------------------


class Head(nn.Module):
    """One head of causal self-attention: every position mixes the values of the positions up to itself,
    weighted by how well its query matches their keys."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        # A buffer, not a parameter: it moves with the model to the GPU but is never trained.
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, head_size)
        q = self.query(x)  # (B, T, head_size)
        # Affinities, scaled by 1/sqrt(head_size) so the softmax does not saturate at initialisation.
        weights = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5  # (B, T, T)
        weights = weights.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # the future is hidden
        weights = F.softmax(weights, dim=-1)
        weights = self.dropout(weights)
        v = self.value(x)  # (B, T, head_size)
        return weights @ v  # (B, T, head_size)


class MultiHeadAttention(nn.Module):
    """Several heads side by side, their outputs concatenated and projected back to ``n_embd``."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd ({n_embd}) must be divisible by n_head ({n_head}) "
                "so each head gets n_embd // n_head dimensions."
            )
        head_size = n_embd // n_head
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout) for _ in range(n_head)])
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([head(x) for head in self.heads], dim=-1)
        return self.dropout(self.proj(out))


# --- The GPT -------------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The shape of a GPT. ``positional`` and ``attention`` choose between the variants the notebooks compare.

    positional: "learned" (a trained table, as GPT-2), "sinusoidal" (the fixed sines and cosines of
        "Attention Is All You Need"), "rotary" (queries and keys turned by an angle that grows with their
        position, so attention sees how far apart two characters are: RoPE, as LLaMA and the speedruns) or
        "none" (no position information: the model cannot tell order).
    attention: "fast" (PyTorch's fused ``scaled_dot_product_attention``) or "explicit" (the masked softmax
        of QK^T/sqrt(d) the notebooks derive). Both compute the same function.

    The modern recipe's options (defaults: GPT-2's choices):
    norm: "layer" (LayerNorm: subtract the mean, divide by the spread) or "rms" (RMSNorm: divide by the root
        mean square only; one reduction fewer, and the speedruns find it as good).
    activation: "gelu" or "relu2" (ReLU squared: max(0, z)², cheaper and, in the speedruns, better).
    qk_norm: RMS-normalise each head's queries and keys before attention, so their dot products stay in a
        range the softmax handles however large the weights grow (it lets a higher learning rate train).
    zero_init: start the projections that write into the residual stream (and an untied head) at zero, so
        every block begins as the identity and the untrained model predicts a uniform distribution.
    tie_embeddings: one matrix reads tokens in and scores them out (GPT-2); False gives each its own.
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False
    positional: str = "learned"
    attention: str = "fast"
    norm: str = "layer"
    activation: str = "gelu"
    qk_norm: bool = False
    zero_init: bool = False
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head works on n_embd // n_head dimensions."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if self.positional not in POSITIONAL_OPTIONS:
            raise ValueError(f"GPTConfig.positional must be one of {POSITIONAL_OPTIONS}, got {self.positional!r}.")
        if self.attention not in ATTENTION_OPTIONS:
            raise ValueError(f"GPTConfig.attention must be one of {ATTENTION_OPTIONS}, got {self.attention!r}.")
        if self.norm not in NORM_OPTIONS:
            raise ValueError(f"GPTConfig.norm must be one of {NORM_OPTIONS}, got {self.norm!r}.")
        if self.activation not in ACTIVATION_OPTIONS:
            raise ValueError(f"GPTConfig.activation must be one of {ACTIVATION_OPTIONS}, got {self.activation!r}.")
        if self.positional == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"GPTConfig.positional='rotary' turns pairs of numbers, so each head's size (n_embd // n_head = "
                f"{self.n_embd // self.n_head}) must be even."
            )


class LayerKVCache:
    """The keys and values one attention layer has computed so far, in buffers of ``capacity`` positions.

    The buffers are allocated on first use (so they get the model's device and dtype) and filled in place,
    which avoids copying the whole cache at every generated token.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values (B, n_head, T, head_size); return all of them so far."""
        B, n_head, T, head_size = k.shape
        end = self.length + T
        if end > self.capacity:
            raise ValueError(
                f"The KV cache holds at most {self.capacity} positions; cannot add {T} to {self.length}. "
                "Call reset() first."
            )
        shape = (B, n_head, self.capacity, head_size)
        if self.keys is None or (
            self.length == 0
            and (self.keys.shape != shape or self.keys.dtype != k.dtype or self.keys.device != k.device)
        ):
            self.keys = k.new_empty(shape)
            self.values = v.new_empty(shape)
        elif self.keys.shape != shape:
            raise ValueError(
                f"The KV cache was filled with batch size {self.keys.size(0)}, got {B}; "
                "call reset() before changing the batch."
            )
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Every layer's keys and values for the tokens processed so far, so that the next forward pass only
    needs the new token: ``logits, _ = model(next_token, kv_cache=cache)``.

    Positions continue from ``length``; the cache holds at most ``block_size`` of them. When it is full,
    ``reset()`` it and process the most recent tokens again (``ds9_utils.generate`` does this).
    """

    def __init__(self, n_layer: int, capacity: int):
        self.layers = [LayerKVCache(capacity) for _ in range(n_layer)]

    @property
    def length(self) -> int:
        """How many positions are cached: the position the next token will get."""
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        return self.layers[0].capacity

    def reset(self) -> None:
        """Forget the cached tokens (the buffers are kept and overwritten)."""
        for layer in self.layers:
            layer.length = 0


class RMSNorm(nn.Module):
    """Divide each vector by its root mean square, then scale each dimension by a learned gain.

    LayerNorm also subtracts the mean and adds a learned bias; RMSNorm keeps only the rescaling, which is what
    keeps the residual stream's size in check.
    """

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 whatever the input, as autocast runs LayerNorm: a bfloat16 mean of squares loses digits.
        x32 = x.float()
        if hasattr(F, "rms_norm"):  # PyTorch 2.4 and later: one fused operation
            return F.rms_norm(x32, (x.size(-1),), self.weight, self.eps).type_as(x)
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).type_as(x)


def make_norm(config: GPTConfig, size: int | None = None) -> nn.Module:
    """The normalisation ``config.norm`` asks for, over the last ``size`` numbers (default: ``n_embd``)."""
    size = size or config.n_embd
    return RMSNorm(size) if config.norm == "rms" else nn.LayerNorm(size, bias=config.bias)


def rotary_angles(block_size: int, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the angles rotary positions turn by: (block_size, head_size // 2) each.

    Pair ``i`` of a head's numbers turns by ``position / base ** (2i / head_size)`` radians: the first pairs
    spin fast (they tell neighbours apart), the last slowly (they tell near from far).
    """
    frequencies = base ** -(torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.arange(block_size, dtype=torch.float32)[:, None] * frequencies[None, :]
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each pair (x[..., i], x[..., i + d/2]) of ``x`` (..., T, d) by its position's angle (T, d/2).

    A query at position m and a key at position n, each turned by its own angle, have a dot product that
    depends only on m - n: attention sees relative distance, with no position table to learn.
    """
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with all heads in one matrix multiply (nanoGPT style).

    One ``Linear`` makes the queries, keys and values of every head at once. The "fast" path hands them to
    PyTorch's fused attention; the "explicit" path writes out softmax(QK^T / sqrt(d) + causal mask) V.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.use_explicit_attention = config.attention == "explicit"
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        head_size = config.n_embd // config.n_head
        self.q_norm = make_norm(config, head_size) if config.qk_norm else None
        self.k_norm = make_norm(config, head_size) if config.qk_norm else None
        self.rotary = config.positional == "rotary"
        if self.rotary:  # buffers, rebuilt from the config: not saved in checkpoints
            cos, sin = rotary_angles(config.block_size, head_size)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        # True where a query may look at a key. Not saved in checkpoints: it is rebuilt from the config.
        causal_mask = torch.ones(config.block_size, config.block_size, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal_mask, persistent=False)

    def _queries_keys_values(
        self, x: torch.Tensor, past_length: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of shape (B, n_head, T, head_size) for the positions from ``past_length`` on.

        Views into the one ``qkv`` output, nothing copied, unless the config normalises queries and keys
        (``qk_norm``) or turns them by their position (``rotary``).
        """
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            positions = slice(past_length, past_length + T)
            cos, sin = self.rotary_cos[positions], self.rotary_sin[positions]
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return q, k, v

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """softmax(QK^T / sqrt(head_size)) with the future masked: (B, n_head, T_query, T_key), rows sum to 1."""
        T_query, T_key = q.size(-2), k.size(-2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        allowed = self.causal_mask[past_length : past_length + T_query, :T_key]
        scores = scores.masked_fill(~allowed, float("-inf"))
        return F.softmax(scores, dim=-1)

    def forward(self, x: torch.Tensor, layer_cache: LayerKVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        past_length = layer_cache.length if layer_cache is not None else 0
        q, k, v = self._queries_keys_values(x, past_length)
        if layer_cache is not None:
            k, v = layer_cache.append(k, v)
        if self.use_explicit_attention:
            weights = self.attn_dropout(self.attention_weights(q, k, past_length))
            y = weights @ v
        else:
            dropout_p = self.dropout if self.training else 0.0
            if past_length == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            elif T == 1:  # one new token may look at every cached one: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            else:  # several new tokens after cached ones: the causal mask is offset by the cached length
                mask = self.causal_mask[past_length : past_length + T, : past_length + T]
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class ReLUSquared(nn.Module):
    """max(0, z)²: zero for negative inputs like ReLU, then a parabola (the speedruns' feed-forward activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class FeedForward(nn.Module):
    """The per-position computation after attention: widen to 4 * n_embd, GELU (or ReLU²), project back."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False, activation: str = "gelu"):
        super().__init__()
        self.expand = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.activation = ReLUSquared() if activation == "relu2" else nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.activation(self.expand(x))))


class Block(nn.Module):
    """A transformer block: tokens communicate (attention), then each thinks on its own (feed-forward).
    Both sit on a residual path with a norm before them (pre-norm, as GPT-2; LayerNorm or RMSNorm)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.ffwd = FeedForward(config.n_embd, config.dropout, config.bias, config.activation)

    def forward(self, x: torch.Tensor, layer_cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer_cache)
        x = x + self.ffwd(self.ln_2(x))
        return x


def sinusoidal_positions(block_size: int, n_embd: int) -> torch.Tensor:
    """The fixed position table of "Attention Is All You Need": sines in even, cosines in odd dimensions,
    with wavelengths from 2*pi to 10000*2*pi. Shape (block_size, n_embd)."""
    positions = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies)[:, : n_embd // 2]
    return table


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 architecture, nanoGPT style)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positional == "learned":
            self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        elif config.positional == "sinusoidal":
            self.register_buffer(
                "position_table", sinusoidal_positions(config.block_size, config.n_embd), persistent=False
            )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying: the same matrix reads tokens in and scores them out (fewer parameters; GPT-2).
            self.token_embedding.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # Each block adds two projections to the residual stream. GPT-2 shrinks them so the stream does not grow
        # with depth; zero_init starts them at nothing, so each block begins as the identity.
        for name, parameter in self.named_parameters():
            if config.zero_init and (name.endswith("proj.weight") or name == "lm_head.weight"):
                nn.init.zeros_(parameter)  # a tied head is the embedding too, so lm_head is only here when untied
            elif name.endswith("proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def block_size(self) -> int:
        """The longest context the model can attend to."""
        return self.config.block_size

    def num_parameters(self, non_embedding: bool = True) -> int:
        """How many numbers the model learns. With ``non_embedding`` the learned position table is left out, and
        so is an untied token embedding (a lookup, no arithmetic); a tied one stays in because, shared with
        ``lm_head``, it also does the output layer's work."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.positional == "learned":
            total -= self.position_embedding.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            total -= self.token_embedding.weight.numel()
        return total

    def new_kv_cache(self) -> KVCache:
        """An empty cache for generation: pass it as ``kv_cache=`` and feed one new token per call."""
        return KVCache(self.config.n_layer, self.config.block_size)

    def _embed(self, idx: torch.Tensor, past_length: int) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"idx must be a (batch, time) tensor of token ids, got shape {tuple(idx.shape)}.")
        T = idx.size(1)
        if T == 0:
            raise ValueError("idx has no tokens; pass at least one token id per row.")
        if past_length + T > self.config.block_size:
            cached = f" after {past_length} cached tokens" if past_length else ""
            raise ValueError(
                f"Cannot process {T} tokens{cached}: the model's block_size is {self.config.block_size}. "
                "Crop the input to the last block_size tokens (idx[:, -block_size:]) or reset the KV cache."
            )
        check_token_ids(idx, self.config.vocab_size)
        x = self.token_embedding(idx)
        if self.config.positional in ABSOLUTE_POSITIONS:
            x = x + self._position_vectors(past_length, T)
        return self.dropout(x)

    def _position_vectors(self, start: int, length: int) -> torch.Tensor:
        """The vectors that tell positions ``start .. start + length - 1`` apart: (length, n_embd)."""
        if self.config.positional == "learned":  # row i of the table is position i's vector
            return self.position_embedding.weight[start : start + length]
        return self.position_table[start : start + length]

    def hidden_states(self, idx: torch.Tensor, *, kv_cache: KVCache | None = None) -> torch.Tensor:
        """What the last block makes of each position, after the final LayerNorm: (B, T, n_embd).

        ``lm_head`` turns these into next-token logits; other heads can read them too (the reward model of
        ``ds9_utils.feedback`` puts a scalar head on them).
        """
        if kv_cache is not None and len(kv_cache.layers) != self.config.n_layer:
            raise ValueError(
                f"The KV cache has {len(kv_cache.layers)} layers but the model has {self.config.n_layer}; "
                "make it with model.new_kv_cache()."
            )
        x = self._embed(idx, kv_cache.length if kv_cache is not None else 0)
        for layer_index, block in enumerate(self.blocks):
            x = block(x, kv_cache.layers[layer_index] if kv_cache is not None else None)
        return self.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for every position, and the mean cross-entropy over all positions when
        ``targets`` (B, T) are given (positions whose target is -1 are ignored).

        With ``kv_cache``, ``idx`` holds only the tokens that follow the cached ones; their keys and values
        are added to the cache.
        """
        logits = self.lm_head(self.hidden_states(idx, kv_cache=kv_cache))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def decode_step(self, tokens: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """Logits (B, vocab_size) for the token after ``tokens`` (B,), one new token per row that follows
        the tokens already in ``kv_cache``; their keys and values join the cache.

        The arithmetic of ``forward(tokens[:, None], kv_cache=kv_cache)`` in eval mode, written out for the
        one case that generation repeats hundreds of times. At batch 1 a step is a few dozen small operations,
        so what each costs beyond its arithmetic shows: here the activations are rows (B, n_embd), the single
        query needs no causal mask (it may look at every cached key), dropout (the identity in eval mode) is
        left out, and the tokens are not checked (the model sampled them itself). The cache must already
        hold the tokens before, as ``generate`` arranges: it fills the cache with ``forward`` first.
        """
        if self.training:  # dropout is on: only the general path applies it
            return self(tokens[:, None], kv_cache=kv_cache)[0][:, -1]
        position = kv_cache.length
        if position >= self.config.block_size:
            raise ValueError(
                f"The KV cache is full ({position} tokens, the model's block_size); reset it and process the "
                "most recent tokens again with forward()."
            )
        x = self.token_embedding(tokens)  # (B, n_embd)
        if self.config.positional in ABSOLUTE_POSITIONS:
            x = x + self._position_vectors(position, 1)
        B, C = x.shape
        for block, layer_cache in zip(self.blocks, kv_cache.layers):
            attn = block.attn
            q, k, v = attn._queries_keys_values(block.ln_1(x)[:, None], position)  # each (B, n_head, 1, head_size)
            keys, values = layer_cache.append(k, v)  # (B, n_head, position + 1, head_size)
            if attn.use_explicit_attention:
                y = attn.attention_weights(q, keys, position) @ values
            else:
                y = F.scaled_dot_product_attention(q, keys, values)
            x = x + attn.proj(y.view(B, C))  # (B, n_head, 1, head_size) holds the heads side by side
            x = x + block.ffwd(block.ln_2(x))  # works on rows as on sequences; its dropout is off in eval mode
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The attention weights of every layer for ``idx``: a list of n_layer tensors (B, n_head, T, T) whose
        row t shows where position t looks. Computed in eval mode (no dropout) with the explicit path."""
        was_training = self.training
        self.eval()
        try:
            maps = []
            x = self._embed(idx, past_length=0)
            for block in self.blocks:
                q, k, _ = block.attn._queries_keys_values(block.ln_1(x))
                maps.append(block.attn.attention_weights(q, k))
                x = block(x)
            return maps
        finally:
            self.train(was_training)
