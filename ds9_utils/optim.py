"""The optimizers: AdamW for every weight (GPT-2's recipe), or Muon for the hidden matrices and AdamW for the rest.

AdamW moves each number by its gradient divided by the gradient's recent size, one number at a time. Muon
looks at a weight matrix as a whole: it takes the (momentum-averaged) gradient matrix and replaces it by the
nearest *orthogonal* matrix, the same directions with every singular value set to about 1. Directions in which
the gradient was weak get as much of the step as the strong ones, so one step changes the matrix's output in
many directions at once instead of a few. The speedruns (modded-nanogpt, nanochat) train their hidden
matrices this way and reach a given loss in fewer steps. Embeddings, the output head and the norms' gains are
not matrices that transform vectors (a lookup table, a classifier, a list of scales), so AdamW keeps them.

Orthogonalising exactly needs an SVD, too slow to do every step. ``orthogonalize`` uses five steps of a
Newton-Schulz iteration instead: a few matrix multiplies that push every singular value towards 1.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

from .precision import device_precision
from .train_config import TrainConfig

#: The quintic Newton-Schulz coefficients of Keller Jordan's Muon (also PyTorch's ``torch.optim.Muon``): chosen
#: to push small singular values up as fast as possible, at the price of leaving each between about 0.7 and 1.2.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> Tensor:
    """An approximately orthogonal matrix with the singular vectors of ``matrix``: U S' V^T with S' near 1.

    Each step maps every singular value s to a s + b s^3 + c s^5 (with ``NEWTON_SCHULZ``'s a, b, c), without
    computing them: X <- a X + (b A + c A^2) X with A = X X^T. Dividing by the norm first puts every s in
    (0, 1], where five steps bring it close to 1. Computed in ``dtype`` and on the wide side (fewer rows than
    columns), so that A is the smaller square. A stack of matrices (..., rows, cols) is done all at once.
    """
    a, b, c = NEWTON_SCHULZ
    x = matrix.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrix.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the parameter groups marked ``use_muon``, AdamW for the others: one optimizer, one state.

    Muon's step for a matrix W with gradient G: a momentum buffer M <- mu M + (1 - mu) G, the Nesterov look-ahead
    U = (1 - mu) G + mu M, then W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) orthogonalize(U). The square
    root keeps the update's size per output the same for tall matrices. PyTorch 2.9 and later ship the same
    algorithm as ``torch.optim.Muon`` (the tests compare the two); this one also runs on older versions and
    carries the AdamW groups with it, so checkpoints, the loss scaler and the schedule see a single optimizer.

    Matrices of one shape are orthogonalised together, as one stack: a small model's many small multiplies cost
    more in calls than in arithmetic. The iteration runs in bfloat16 where the run computes in it (natively, or
    ``DS9_PRECISION=bf16``; ``torch.optim.Muon`` uses it everywhere), else in float32: it only needs the
    directions, not many digits.
    """

    def __init__(self, param_groups: Iterable[dict], betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8):
        defaults = dict(lr=1e-3, weight_decay=0.0, momentum=0.95, betas=betas, eps=eps, use_muon=False)
        super().__init__(list(param_groups), defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("MuonAdamW: a use_muon group may only hold matrices (2-D parameters)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon_update(params, group)
            else:
                for p in params:
                    self._adamw_update(p, group)
        return loss

    def _muon_update(self, params: list[Tensor], group: dict) -> None:
        mu, lr = group["momentum"], group["lr"]
        by_shape: dict[tuple[int, ...], list[Tensor]] = defaultdict(list)
        for p in params:
            by_shape[tuple(p.shape)].append(p)
        for (rows, cols), same_shape in by_shape.items():
            look_aheads = []
            for p in same_shape:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                state["momentum_buffer"].lerp_(p.grad, 1 - mu)
                look_aheads.append(p.grad.lerp(state["momentum_buffer"], mu))
            dtype = torch.bfloat16 if device_precision(same_shape[0].device) == "bf16" else torch.float32
            updates = orthogonalize(torch.stack(look_aheads), dtype=dtype)
            for p, update in zip(same_shape, updates):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * math.sqrt(max(1.0, rows / cols)))

    def _adamw_update(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        (beta1, beta2), lr = group["betas"], group["lr"]
        state["step"] += 1
        step = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.mul_(1 - lr * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, with weight decay on matrices and embeddings only.

    Weight decay pulls weights towards zero; that regularises the big matrices, but for biases and norm gains
    it would only fight the values the model needs. Every group records its ``peak_lr``: the schedule scales
    all of them by the same factor (``set_learning_rates``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    blocks = getattr(model, "blocks", None)
    hidden = {id(p) for p in blocks.parameters() if p.dim() == 2} if cfg.optimizer == "muon" and blocks else set()
    groups = [
        {"params": [p for p in params if id(p) in hidden], "use_muon": True, "lr": cfg.muon_lr, "weight_decay": 0.0},
        {"params": [p for p in params if p.dim() >= 2 and id(p) not in hidden], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    for group in groups:
        group["peak_lr"] = group.setdefault("lr", cfg.learning_rate)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        return MuonAdamW(groups, betas=betas)
    # The fused kernel updates every parameter in one pass: 1.16x faster steps for the cpu preset's model on a
    # 2-core CPU, 1.05x for nanoGPT's small one. CPUs have it from torch 2.4; older versions refuse, so ask.
    if next(model.parameters()).device.type in ("cuda", "cpu"):
        with contextlib.suppress(RuntimeError):
            return torch.optim.AdamW(groups, betas=betas, fused=True)
    return torch.optim.AdamW(groups, betas=betas)


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float, cfg: TrainConfig) -> None:
    """Give every group the schedule's rate ``lr`` for AdamW's weights, scaled to the group's own peak.

    With one group (the classic recipe) that is ``lr`` itself; Muon's matrices follow the same curve from
    their own, higher ``muon_lr``.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("peak_lr", cfg.learning_rate) / cfg.learning_rate
