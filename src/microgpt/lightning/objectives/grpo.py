"""Group-relative policy optimisation (DeepSeekMath's GRPO) with verifiable rewards.

Per micro-batch of prompts: sample `group_size` completions of each with the KV cache (no
gradients, eval mode), score each with the reward function (`reward(completion, answer) -> number`,
a `_target_` config), and normalise the rewards within each prompt's group: the advantage of a
completion is (r - mean) / (std + eps) over its group, so only how a completion compares with its
siblings matters and no value network is needed. Then, with gradients, the PPO-style clipped
surrogate over the completion tokens (up to and including end-of-turn), plus `kl` times the k3
estimate of KL(policy || reference), averaged over all completion tokens of the micro-batch.

Each sampled batch is used for one update (TRL's default), so the ratio to the sampling policy is
1 in value and the clip only bites where dropout makes the two forwards differ; it is kept so the
objective stays the clipped one if several updates per batch are added.

Sampling draws from a generator seeded by (seed, optimizer step, rank, micro-batch of the step):
a resumed run samples exactly the completions the uninterrupted run sampled.

Validation decodes greedily and reports val/pass@1 (share of prompts with a reward of 1 or more),
val/reward and val/completion_len; val/loss is 1 - pass@1, so the best checkpoint (monitor
val/loss, mode min) is the policy with the best held-out pass@1."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torchmetrics import MeanMetric

from microgpt.core.errors import ConfigError, require_positive_int
from microgpt.core.logprobs import masked_targets, token_logprobs
from microgpt.core.sampling import check_sampling
from microgpt.evals.completions import complete, completion_mask, completion_texts, greedy_scores, score
from microgpt.lightning.module import unsharded
from microgpt.lightning.objectives.base import Objective

if TYPE_CHECKING:
    from microgpt.core.model import GPT
    from microgpt.lightning.module import GPTModule


@dataclass
class Rollout:
    """Sampled completions of a micro-batch, ready for the policy-gradient step."""

    seq: torch.Tensor  # (B*G, P + n) prompts and completions
    pad: torch.Tensor  # (B*G,) left padding of each row
    targets: torch.Tensor  # (B*G, P + n - 1) the completion tokens as next-token targets, -1 elsewhere
    advantages: torch.Tensor  # (B*G,)
    old: torch.Tensor  # (B*G, P + n - 1) log-probs under the sampling policy
    reference: torch.Tensor | None  # the same under the reference model (kl > 0)
    rewards: torch.Tensor  # (B*G,)


class GRPO(Objective):
    def __init__(self, reward: Callable[[str, str], float], group_size: int = 8, max_new_tokens: int = 8,
                 temperature: float = 1.0, top_k: int | None = None, clip: float = 0.2, kl: float = 0.0,
                 seed: int = 0, eps: float = 1e-4) -> None:
        super().__init__()
        if not callable(reward):
            raise ConfigError(f"objective.reward must be a `_target_` config of a function reward(completion, answer) "
                              f"-> number, with `_partial_: true`; got {reward!r}")
        if require_positive_int("objective.group_size", group_size) < 2:
            raise ConfigError("objective.group_size must be at least 2: advantages compare completions of one prompt")
        require_positive_int("objective.max_new_tokens", max_new_tokens)
        check_sampling(temperature, top_k, None)
        if temperature == 0:
            raise ConfigError("objective.temperature=0 samples one completion G times (no advantage to learn from); "
                              "use a temperature > 0, e.g. 1.0")
        if not clip > 0 or not kl >= 0:
            raise ConfigError(f"objective.clip must be > 0 and objective.kl >= 0, got clip={clip}, kl={kl}")
        self.reward, self.group_size, self.max_new_tokens = reward, group_size, max_new_tokens
        self.temperature, self.top_k, self.clip, self.kl, self.seed, self.eps = temperature, top_k, clip, kl, seed, eps
        self.needs_reference = kl > 0  # training.py then gives us `reference`, the frozen init_from weights
        self.val_pass, self.val_reward, self.val_len = MeanMetric(), MeanMetric(), MeanMetric()
        self._micro = (-1, 0)  # (optimizer step, micro-batch index within it)

    def training_loss(self, module: GPTModule, batch: dict) -> torch.Tensor:
        r = self.rollout(module, batch)
        logp = token_logprobs(module._train_forward(r.seq[:, :-1], pad=r.pad)[0], r.targets, module.model.config.vocab_size)
        mask = (r.targets >= 0).float()
        ratio = torch.exp(logp - r.old)
        advantage = r.advantages[:, None]
        per_token = -torch.minimum(ratio * advantage, ratio.clamp(1 - self.clip, 1 + self.clip) * advantage)
        metrics = {"train/reward_mean": r.rewards.mean(), "train/completion_len": mask.sum(dim=1).mean()}
        if r.reference is not None:
            kl = k3_kl(logp, r.reference)
            per_token = per_token + self.kl * kl
            metrics["train/kl"] = (kl * mask).sum().detach() / mask.sum().clamp(min=1)
        for name, value in metrics.items():
            module.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=len(batch["answers"]))
        return (per_token * mask).sum() / mask.sum().clamp(min=1)

    def rollout(self, module: GPTModule, batch: dict) -> Rollout:
        G, tokenizer = self.group_size, module.tokenizer
        prompts, pad = batch["ids"].repeat_interleave(G, dim=0), batch["pad"].repeat_interleave(G, dim=0)
        n = min(self.max_new_tokens, module.model.config.block_size - prompts.size(1))
        if n < 1:
            raise ConfigError(f"prompts of {prompts.size(1)} tokens leave no room to answer in the context "
                              f"(model.block_size={module.model.config.block_size}); lower data.max_prompt_tokens")
        with unsharded(module.trainer, module.model) as model:
            tokens = complete(model, prompts, pad, tokenizer.end_of_turn, n, self.temperature, self.top_k,
                              self.generator(module))
        answers, where = [a for a in batch["answers"] for _ in range(G)], [w for w in batch["where"] for _ in range(G)]
        texts = completion_texts(tokenizer, tokens, tokenizer.end_of_turn)
        rewards = torch.tensor(agreed(module, lambda: score(self.reward, texts, answers, where)), device=module.device)
        seq = torch.cat([prompts, tokens], dim=1)
        trained = torch.cat([torch.zeros_like(prompts, dtype=torch.bool), completion_mask(tokens, tokenizer.end_of_turn)], 1)
        targets = masked_targets(seq, trained)
        vocab = module.model.config.vocab_size
        with torch.no_grad():
            old = token_logprobs(eval_logits(module.model, seq[:, :-1], pad), targets, vocab)
            reference = (token_logprobs(eval_logits(self.reference, seq[:, :-1], pad), targets, vocab)
                         if self.reference is not None else None)
        return Rollout(seq, pad, targets, group_advantages(rewards, G, self.eps), old, reference, rewards)

    def generator(self, module: GPTModule) -> torch.Generator:
        step = module.trainer.global_step
        self._micro = (step, self._micro[1] + 1 if self._micro[0] == step else 0)
        key = f"{self.seed}/{step}/{module.global_rank}/{self._micro[1]}".encode()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        return torch.Generator(device=module.device).manual_seed(seed)

    def validation_update(self, module: GPTModule, batch: dict) -> None:
        with unsharded(module.trainer, module.model) as model:
            rewards, lengths = agreed(module, lambda: greedy_scores(model, module.tokenizer, batch, self.reward,
                                                                    self.max_new_tokens))
        values = torch.tensor(rewards, dtype=torch.float32, device=module.device)
        self.val_pass.update((values >= 1.0).float())
        self.val_reward.update(values)
        self.val_len.update(lengths.float())

    def validation_metrics(self) -> dict[str, torch.Tensor]:
        passed, reward, length = self.val_pass.compute(), self.val_reward.compute(), self.val_len.compute()
        for metric in (self.val_pass, self.val_reward, self.val_len):
            metric.reset()
        return {"val/loss": 1.0 - passed, "val/pass@1": passed, "val/reward": reward, "val/completion_len": length}


def agreed(module: GPTModule, scoring: Callable):
    """`scoring()`, or the reward function's error raised on every rank at once: a rank failing
    alone would leave the others waiting in the next collective."""
    problem, result = None, None
    try:
        result = scoring()
    except ConfigError as e:
        problem = e
    trainer = module.trainer
    if trainer is not None and trainer.world_size > 1:
        failed = trainer.strategy.reduce(torch.tensor(float(problem is not None), device=module.device), reduce_op="sum")
        if failed.item() > 0 and problem is None:
            problem = ConfigError("the reward function failed on another rank; that rank's error line names the prompt")
    if problem is not None:
        raise problem
    return result


def eval_logits(model: GPT, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode (no dropout: the policy that sampled), the model's mode kept."""
    was_training = model.training
    model.eval()
    try:
        return model(ids, pad=pad)[0]
    finally:
        model.train(was_training)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """(r - mean) / (std + eps) within each group of `group_size` consecutive completions."""
    groups = rewards.view(-1, group_size)
    return ((groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + eps)).view(-1)


def k3_kl(logp: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference), Schulman's unbiased, always positive k3 estimator."""
    delta = reference - logp
    return torch.exp(delta) - delta - 1
