"""Mixture of experts: a router sends each token to its top-k experts (SwiGLU / GELU / ReLU^2 MLPs
held as 3-D tensors), optionally plus shared experts every token goes through.

Routing follows the families it exports to. `softmax`: probabilities over all experts, the top-k
kept and (router_norm_topk) renormalised to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob).
`sigmoid`: an independent score per expert, the top-k kept and renormalised (DeepSeek-V3, without
its group-limited choice and bias correction).

Expert compute is batched: the (token, expert) assignments are sorted by expert, so each expert's
tokens form one contiguous group, and two grouped matmuls run every expert at once. On the CPU
that is `torch.nn.functional.grouped_mm` (rows of whole 16-byte units only); elsewhere (its CUDA
kernel wants bf16 on SM80+, not checked here) a loop over the experts' groups, one host sync per
layer. Measured on a moe_nano layer (fp32, one thread, forward + backward, best of 10, a busy
2-core machine): 768 tokens 44 ms grouped vs 58 ms looping over experts; 1536 tokens 79 vs 75 ms.
About even, so the grouped path is kept for having no per-expert loop and no host sync.

Losses, from the last forward (kept on the module, like an activation): the load-balancing loss
of Switch / Mixtral, `n_experts * sum_e f_e * P_e`, with f_e the fraction of the token-expert
assignments that went to e (summing to 1, so a balanced router scores 1.0; Hugging Face's Mixtral
counts tokens instead, k times this) and P_e the mean routing probability of e (sigmoid scores
normalised per token); and the router z-loss of ST-MoE, the mean of logsumexp(logits)^2.
`moe_loss(model)` weighs and sums them over the MoE layers; `moe_stats(model)` reports them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from microgpt.core.config import GPTConfig
from microgpt.core.layers import MLP, activation, fc_width


class MoE(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.expert_hidden_size
        self.n_experts, self.top_k = config.n_experts, config.n_experts_per_tok
        self.kind, self.router_kind, self.norm_topk = config.mlp, config.router, config.router_norm_topk
        self.aux_loss_weight, self.z_loss_weight = config.aux_loss_weight, config.z_loss_weight
        self.router = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.expert_fc = nn.Parameter(torch.empty(config.n_experts, fc_width(config, hidden), config.n_embd))
        self.expert_proj = nn.Parameter(torch.empty(config.n_experts, config.n_embd, hidden))
        self.shared = MLP(config, config.n_shared_experts * hidden) if config.n_shared_experts else None
        self.dropout = nn.Dropout(config.dropout)
        self.reset_expert_parameters(config.n_layer)
        # From the last forward; plain attributes (not buffers): no part of the state dict.
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        self.load: torch.Tensor | None = None  # (n_experts,) fraction of assignments, detached

    def reset_expert_parameters(self, n_layer: int) -> None:
        """GPT-2's initialisation for the expert tensors: normal(0.02), the output projection
        scaled by 1/sqrt(2 * n_layer) as the residual projections are."""
        nn.init.normal_(self.expert_fc, mean=0.0, std=0.02)
        nn.init.normal_(self.expert_proj, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    # Eager even inside a compiled model: the experts' group sizes depend on the data (dynamo
    # would break the graph or recompile on them), grouped_mm's compile-time check wants bf16,
    # and the losses kept on the module stay out of the graph. The dense layers compile as before.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        logits = self.router(flat)
        weights, experts, probs = self.route(logits)
        counts = torch.bincount(experts.reshape(-1), minlength=self.n_experts)
        y = self.dropout(self.experts(flat, weights, experts, counts))
        if self.shared is not None:
            y = y + self.shared(flat)  # with its own dropout
        self._keep_losses(logits, probs, counts)
        return y.view(B, T, C)

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, experts) of each token's top-k, both (N, k), and the per-expert routing
        probabilities (N, n_experts) the balancing loss averages; all in fp32."""
        logits = logits.float()
        scores = logits.softmax(-1) if self.router_kind == "softmax" else logits.sigmoid()
        weights, experts = scores.topk(self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        probs = scores if self.router_kind == "softmax" else scores / scores.sum(-1, keepdim=True)
        return weights, experts, probs

    def experts(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        """sum_j weights[n, j] * expert_{experts[n, j]}(x[n]) for every token n, as (N, C);
        `counts` (n_experts,) the assignments per expert."""
        N, k = experts.shape
        order = experts.reshape(-1).argsort(stable=True)  # assignments grouped by expert
        token = order // k
        dtype = compute_dtype(x)
        xs = x.index_select(0, token).to(dtype)
        fc, proj = self.expert_fc.to(dtype), self.expert_proj.to(dtype)
        if use_grouped_mm(x.device, dtype, (x.size(1), self.expert_proj.size(2))):
            offsets = counts.cumsum(0).to(torch.int32)
            h = activation(self.kind, F.grouped_mm(xs, fc.transpose(1, 2), offs=offsets))
            out = F.grouped_mm(h, proj.transpose(1, 2), offs=offsets)
        else:
            groups = xs.split(counts.tolist())
            out = torch.cat([activation(self.kind, g @ fc[e].t()) @ proj[e].t() for e, g in enumerate(groups)])
        out = out * weights.reshape(-1)[order, None].to(out.dtype)
        return out.new_zeros(N, x.size(1)).index_add_(0, token, out)

    def _keep_losses(self, logits: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor) -> None:
        load = counts.float() / counts.sum()
        self.aux_loss = self.n_experts * (load * probs.mean(0)).sum()
        self.z_loss = torch.logsumexp(logits.float(), dim=-1).square().mean()
        self.load = load.detach()


def use_grouped_mm(device: torch.device, dtype: torch.dtype, widths: tuple[int, ...]) -> bool:
    """Grouped matmuls where they are known to work for every dtype, the CPU, and only for rows
    of whole 16-byte units (its kernel refuses other strides)."""
    return device.type == "cpu" and all(w * dtype.itemsize % 16 == 0 for w in widths)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a Linear layer would compute in here: autocast's when it is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_loss(model: nn.Module) -> torch.Tensor:
    """sum over MoE layers of aux_loss_weight * aux + z_loss_weight * z, from the last forward
    (a zero tensor for a dense model, or before any forward)."""
    total = None
    for m in moe_layers(model):
        if m.aux_loss is None:
            continue
        term = m.aux_loss_weight * m.aux_loss + m.z_loss_weight * m.z_loss
        total = term if total is None else total + term
    if total is None:
        return next(model.parameters()).new_zeros(())
    return total


def moe_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """The last forward's router statistics, detached: `aux_loss` and `z_loss` (means over the MoE
    layers, unweighted), `load` (n_experts,) the mean fraction of assignments per expert, and
    `max_load` the largest fraction any expert of any layer got (1 / n_experts when balanced).
    Empty for a dense model or before any forward."""
    layers = [m for m in moe_layers(model) if m.aux_loss is not None]
    if not layers:
        return {}
    loads = torch.stack([m.load for m in layers])
    return {
        "aux_loss": torch.stack([m.aux_loss.detach() for m in layers]).mean(),
        "z_loss": torch.stack([m.z_loss.detach() for m in layers]).mean(),
        "load": loads.mean(0),
        "max_load": loads.max(),
    }
