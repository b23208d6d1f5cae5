"""Chapter 13's exercises: the rank budget of LoRA, one base model with several adapters, undoing a merge, a LoRA
layer's forward pass."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from ds9_utils.exercises import Exercise, close_problem, equal_problem, register, with_typical_mistake
from ds9_utils.finetune import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    count_parameters,
    load_adapter,
    merge_lora,
    save_adapter,
)
from ds9_utils.model import GPT, GPTConfig


def _base_model(n_embd: int = 16, n_layer: int = 2) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd)).eval()


def _trained_looking_adapter(base: GPT, rank: int = 2) -> GPT:
    """A LoRA copy of ``base`` whose B matrices are not zero, as if it had been trained."""
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=rank, alpha=2 * rank))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0, 0.5)
    return adapted


def lora_parameters(rank: int, in_features: int, out_features: int) -> int:
    # A is rank x in, B is out x rank: r (in + out) numbers, against in x out for the whole matrix.
    return rank * (in_features + out_features)


def _check_lora_parameters(answer) -> list[str]:
    for n_embd, rank in [(16, 1), (16, 4), (32, 8), (32, 32)]:
        model = add_lora(_base_model(n_embd), LoRAConfig(rank=rank, alpha=2 * rank, targets=("attn.qkv",)))
        out_features, in_features = model.blocks[0].attn.qkv.base.weight.shape
        per_layer = count_parameters(model).trainable // model.config.n_layer
        what = f"lora_parameters(rank={rank}, in_features={in_features}, out_features={out_features})"
        problem = equal_problem(what, answer(rank, in_features, out_features), per_layer)
        if problem:
            return [problem + " (what count_parameters(...).trainable finds per adapted qkv layer)"]
    return []


def _rank_budget_demo() -> None:
    in_features, out_features = 256, 768  # a qkv layer of a model with n_embd = 256
    print(
        f"break-even rank: r (in + out) = in x out at r = {in_features * out_features / (in_features + out_features)}"
    )
    for rank in (1, 8, 64, 192):
        print(
            f"rank {rank:3}: {lora_parameters(rank, in_features, out_features):>7,} numbers, "
            f"the full matrix {in_features * out_features:,}"
        )


register(
    Exercise(
        id="13.1",
        title="The rank budget",
        check=_check_lora_parameters,
        solution=lora_parameters,
        verified="r (in + out) numbers per adapted layer, as count_parameters finds",
        demo=_rank_budget_demo,
    )
)


def load_voice(base: GPT, adapter_path: Path) -> GPT:
    # Each voice gets its own copy of the base: load_adapter changes the model it is given.
    return merge_lora(load_adapter(adapter_path, copy.deepcopy(base))).eval()


def _check_load_voice(answer) -> list[str]:
    base = _base_model()
    before = copy.deepcopy(base.state_dict())
    idx = torch.randint(40, (2, 12), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        paths = [
            save_adapter(Path(folder) / f"voice_{i}.pt", _trained_looking_adapter(base, rank=i + 1)) for i in range(2)
        ]
        for path in paths:
            voice = answer(base, path)
            if not isinstance(voice, torch.nn.Module):
                return [f"load_voice should return the model with the adapter, got {type(voice).__name__}"]
            problem = close_problem(
                f"the logits of the model with {path.name}",
                voice.eval()(idx, idx)[0],
                load_voice(base, path)(idx, idx)[0],
            )
            if problem:
                return [problem]
            if any(isinstance(module, LoRALinear) for module in base.modules()) or not all(
                torch.equal(before[name], tensor) for name, tensor in base.state_dict().items()
            ):
                return [f"loading {path.name} changed the base model: load each adapter onto copy.deepcopy(base)"]
    return []


register(
    Exercise(
        id="13.2",
        title="Two voices, one base model",
        check=_check_load_voice,
        solution=load_voice,
        verified="each adapter file gives its own voice, and the shared base model stays untouched",
    )
)


def unmerge(merged_weight: torch.Tensor, lora_layer: LoRALinear) -> torch.Tensor:
    # Merging added (alpha / r) B A to the weight; take it away again.
    return merged_weight - lora_layer.scaling * (lora_layer.lora_B @ lora_layer.lora_A)


def _check_unmerge(answer) -> list[str]:
    base = _base_model()
    adapted = _trained_looking_adapter(base)
    merged = merge_lora(adapted)
    for block in range(base.config.n_layer):
        got = answer(merged.blocks[block].attn.qkv.weight.detach(), adapted.blocks[block].attn.qkv)
        problem = close_problem(
            f"unmerge of block {block}'s qkv weight (it should be the base weight again)",
            got,
            base.blocks[block].attn.qkv.weight,
            atol=1e-5,
        )
        if problem:
            return [problem]
    return []


def _undo_merge_demo() -> None:
    base = _base_model()
    adapted = _trained_looking_adapter(base)
    unmerged = unmerge(merge_lora(adapted).blocks[0].attn.qkv.weight, adapted.blocks[0].attn.qkv)
    difference = (unmerged - base.blocks[0].attn.qkv.weight).abs().max().item()
    print(f"largest difference from the base weight after merge and unmerge: {difference:.1e}")
    print(
        "(W + D) - D is rounded twice in float32: close to W, not always equal to it. Adapters kept apart "
        "leave the base exact, and switching voices swaps a few kilobytes instead of every matrix."
    )


register(
    Exercise(
        id="13.3",
        title="Undo a merge",
        check=_check_unmerge,
        solution=unmerge,
        verified="subtracts (alpha / r) B A and gets the base weight back, up to float32 rounding",
        demo=_undo_merge_demo,
    )
)


def lora_forward(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, alpha: float):
    # The frozen layer, plus the low-rank correction scaled by alpha / rank (rank: the rows of A).
    rank = lora_A.size(0)
    return x @ weight.T + (alpha / rank) * (x @ lora_A.T) @ lora_B.T


def _lora_unscaled(x, weight, lora_A, lora_B, alpha):
    """A typical mistake: adding the correction without its scale alpha / rank."""
    return x @ weight.T + (x @ lora_A.T) @ lora_B.T


def _lora_scaled_by_alpha(x, weight, lora_A, lora_B, alpha):
    """A typical mistake: scaling by alpha alone, not alpha / rank."""
    return x @ weight.T + alpha * (x @ lora_A.T) @ lora_B.T


def _check_lora_forward(answer) -> list[str]:
    generator = torch.Generator().manual_seed(13)
    for shape, (out_features, in_features), rank, alpha in (
        ((4, 16), (24, 16), 2, 4.0),
        ((2, 5, 32), (32, 32), 8, 16.0),
        ((3, 8), (6, 8), 4, 1.0),
    ):
        layer = LoRALinear(torch.nn.Linear(in_features, out_features, bias=False), rank, alpha)
        with torch.no_grad():
            layer.base.weight.copy_(torch.randn(out_features, in_features, generator=generator))
            layer.lora_A.copy_(torch.randn(rank, in_features, generator=generator) / in_features**0.5)
            layer.lora_B.copy_(torch.randn(out_features, rank, generator=generator))  # as if trained
        x = torch.randn(*shape, generator=generator)
        what = f"lora_forward for x of shape {shape}, a {out_features} x {in_features} weight, rank {rank}"
        what += f", alpha {alpha:g}"
        with torch.no_grad():
            expected = layer(x)
            args = (x, layer.base.weight.clone(), layer.lora_A.clone(), layer.lora_B.clone(), alpha)
            got = answer(*args)
        problem = close_problem(what, got, expected)
        if problem is None:
            continue
        return [
            with_typical_mistake(
                problem,
                got,
                (
                    (_lora_unscaled, "you added the correction without its scale: multiply it by alpha / rank"),
                    (
                        _lora_scaled_by_alpha,
                        "you scaled the correction by alpha; the scale is alpha / rank (rank = A's rows)",
                    ),
                ),
                args,
            )
        ]
    return []


register(
    Exercise(
        id="13.4",
        title="A LoRA layer, by hand",
        builds="a LoRA linear layer",
        check=_check_lora_forward,
        solution=lora_forward,
        verified="the same outputs as ds9_utils.finetune.LoRALinear with trained-looking adapters, for three shapes",
    )
)
