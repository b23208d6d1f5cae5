"""Tests for ds9_utils.optim: Newton-Schulz orthogonalisation, Muon with AdamW, the groups and their rates."""

from __future__ import annotations

import pytest
import torch

from ds9_utils.model import GPT, GPTConfig
from ds9_utils.optim import MuonAdamW, configure_optimizer, orthogonalize, set_learning_rates
from ds9_utils.train_config import TrainConfig


def random_matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(16, 16), (48, 16), (16, 64)])
def test_orthogonalize_keeps_the_directions_and_sets_every_singular_value_near_one(shape):
    matrix = random_matrix(*shape)
    result = orthogonalize(matrix)
    assert result.shape == matrix.shape and result.dtype == matrix.dtype
    singular_values = torch.linalg.svdvals(result)
    # the quintic iteration trades exactness for speed: every value lands between about 0.7 and 1.2
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    polar = u @ vh  # the exactly orthogonal matrix nearest to ``matrix``
    cosine = (result * polar).sum() / (result.norm() * polar.norm())
    assert cosine > 0.95


def test_orthogonalize_does_a_stack_of_matrices_as_each_alone():
    stack = torch.stack([random_matrix(8, 24, seed) for seed in range(3)])
    together = orthogonalize(stack)
    for index in range(3):
        assert torch.allclose(together[index], orthogonalize(stack[index]), atol=1e-5)


def test_orthogonalize_of_a_zero_matrix_is_zero_not_nan():
    assert torch.equal(orthogonalize(torch.zeros(4, 6)), torch.zeros(4, 6))


def muon_run(optimizer_class, params, gradients, **kwargs):
    optimizer = optimizer_class(params, **kwargs)
    for gradient in gradients:
        for p, g in zip(params if isinstance(params[0], torch.Tensor) else params[0]["params"], gradient):
            p.grad = g.clone()
        optimizer.step()


COSINE = 0.999  # Muon without Nesterov's look-ahead, or without momentum, moves these matrices at cosine 0.95-0.99


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon arrived in PyTorch 2.9")
def test_muon_groups_step_as_torch_optim_muon():
    shapes = [(24, 8), (8, 24), (16, 16)]
    start = [random_matrix(*shape, seed) for seed, shape in enumerate(shapes)]
    gradients = [[random_matrix(*shape, 10 * step + seed) for seed, shape in enumerate(shapes)] for step in range(3)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    lr = 0.02
    group = {"params": ours, "use_muon": True, "lr": lr, "weight_decay": 0.1, "momentum": 0.95}
    muon_run(MuonAdamW, [group], gradients)
    muon_run(torch.optim.Muon, theirs, gradients, lr=lr, weight_decay=0.1, momentum=0.95, nesterov=True)
    # torch orthogonalises in bfloat16 everywhere, where the iteration's rounding moves single entries by up to
    # 15%: compare each matrix's whole move, its direction and its length.
    for a, b, before in zip(ours, theirs, start):
        our_move, their_move = (a - before).detach().flatten(), (b - before).detach().flatten()
        assert torch.nn.functional.cosine_similarity(our_move, their_move, dim=0) > COSINE
        assert our_move.norm() == pytest.approx(their_move.norm().item(), rel=0.03)


def test_adamw_groups_step_as_torch_optim_adamw():
    start = [random_matrix(6, 5), random_matrix(1, 7).squeeze(0)]
    gradients = [[random_matrix(6, 5, 10 + step), random_matrix(1, 7, 20 + step).squeeze(0)] for step in range(4)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    settings = dict(lr=3e-3, weight_decay=0.1)
    muon_run(MuonAdamW, [{"params": ours, **settings}], gradients, betas=(0.9, 0.99))
    muon_run(torch.optim.AdamW, [{"params": theirs, **settings}], gradients, betas=(0.9, 0.99))
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-6)


def test_a_muon_group_takes_only_matrices():
    with pytest.raises(ValueError, match="only hold matrices"):
        MuonAdamW([{"params": [torch.zeros(3, requires_grad=True)], "use_muon": True}])


def tiny_gpt(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, **changes))


def test_configure_optimizer_gives_muon_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_gpt(tie_embeddings=False, norm="rms", positional="rotary")
    cfg = TrainConfig(optimizer="muon", muon_lr=0.05, learning_rate=2e-3, min_lr=2e-4)
    optimizer = configure_optimizer(model, cfg)
    assert isinstance(optimizer, MuonAdamW)
    muon_group, matrices, vectors = optimizer.param_groups
    block_matrices = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    assert {id(p) for p in muon_group["params"]} == block_matrices and muon_group["use_muon"]
    assert {id(p) for p in matrices["params"]} == {id(model.token_embedding.weight), id(model.lm_head.weight)}
    assert all(p.dim() == 1 for p in vectors["params"]) and vectors["weight_decay"] == 0.0
    assert (muon_group["peak_lr"], matrices["peak_lr"]) == (0.05, 2e-3)
    set_learning_rates(optimizer, 1e-3, cfg)  # half of the AdamW peak: every group at half its own peak
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.025, 1e-3, 1e-3])


def test_the_classic_recipe_is_adamw_on_every_parameter():
    model = tiny_gpt()
    optimizer = configure_optimizer(model, TrainConfig())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
