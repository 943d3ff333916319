"""Muon on the hidden matrices, AdamW on everything else, as one optimizer (`optim=muon`).

Muon (Jordan et al. 2024, the modded-nanogpt speedrun) replaces each hidden matrix's momentum
update by its nearest semi-orthogonal matrix, found by a few Newton-Schulz iterations: every
direction of the update moves by about the same amount. It is meant for the matrices inside the
blocks only; the embedding, the LM head, norm gains and biases keep AdamW. One optimizer object
holds both kinds of groups, so Lightning's single-optimizer loop, the LR schedule (a factor on each
group's own rate), checkpoints and exact resume work as for any torch optimizer.

The module tags its parameter groups with `kind`: "hidden" (Muon) or "adam"; it does so for any
optimizer class with `splits_hidden_matrices = True`.
"""

from __future__ import annotations

import math

import torch
from torch.optim.adam import adam

# Keller Jordan's quintic: the slope at zero as steep as possible, singular values land in ~[0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int, dtype: torch.dtype, eps: float = 1e-7) -> torch.Tensor:
    """The Newton-Schulz approximation of U V^T for update = U S V^T; a (E, m, n) stack (MoE
    experts) is done matrix by matrix."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    fused = torch.addmm if x.dim() == 2 else torch.baddbmm  # b*A + c*A@A and a*X + B@X in one op each
    for _ in range(steps):
        gram = x @ x.mT
        x = fused(x, fused(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(update.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the groups of kind "hidden", AdamW (decoupled weight decay) for the rest.

    `lr`, `momentum`, `nesterov`, `ns_steps`, `weight_decay` are Muon's (its rate is scaled by
    sqrt(max(1, rows / cols)) per matrix, as in the original); `adam_lr`, `adam_betas`, `adam_eps`
    are the AdamW groups'. `ns_dtype`: the Newton-Schulz matmuls' precision (null: bfloat16 on CUDA,
    float32 elsewhere, where bf16 matmuls are slower).
    """

    splits_hidden_matrices = True

    def __init__(self, params, lr: float = 0.02, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, adam_lr: float = 3e-3,
                 adam_betas: tuple[float, float] = (0.9, 0.95), adam_eps: float = 1e-8,
                 ns_dtype: str | None = None) -> None:
        for name, value in (("lr", lr), ("adam_lr", adam_lr)):
            if not value > 0:
                raise ValueError(f"Invalid {name}: {value}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, betas=tuple(adam_betas), eps=adam_eps, kind="adam")
        super().__init__(params, defaults)
        for group in self.param_groups:  # (a checkpoint's groups replace these when it is loaded)
            if group["kind"] == "adam":
                group["lr"] = adam_lr
        self.ns_dtype = getattr(torch, ns_dtype) if ns_dtype else None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            (self._muon if group["kind"] == "hidden" else self._adamw)(group, params)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
            dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
            update = orthogonalize(update, group["ns_steps"], dtype)
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.size(-2) / p.size(-1))))

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch's own AdamW step (its functional form), on this group's state."""
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=torch.zeros((), dtype=torch.float32),
                                     exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [], [s["step"] for s in states], decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
            lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )
