"""Model soups (Wortsman et al. 2022): the ingredients, their compatibility, uniform and greedy averages."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.io.checkpoints import check_checkpoint, read_checkpoint

log = logging.getLogger(__name__)


METHODS = ("uniform", "greedy")


@dataclass
class Ingredient:
    name: str
    path: Path
    ckpt: dict = field(repr=False)
    metrics: dict = field(default_factory=dict)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.ckpt["state_dict"]


def read_ingredients(paths: list[str | Path], names: list[str] | None = None) -> list[Ingredient]:
    ingredients = [Ingredient(names[i] if names else Path(p).name, Path(p), read_checkpoint(p))
                   for i, p in enumerate(paths)]
    for ingredient in ingredients:
        check_checkpoint(ingredient.ckpt, str(ingredient.path))  # each one's config describes its weights
    check_compatible(ingredients)
    return ingredients


def check_compatible(ingredients: list[Ingredient]) -> None:
    """Refuse to average models that are not the same network with the same tokenizer."""
    if len(ingredients) < 2:
        raise ConfigError(f"a soup needs at least two ingredients, got {len(ingredients)}")
    first = ingredients[0]
    base_hp = first.ckpt.get("hyper_parameters") or {}
    for other in ingredients[1:]:
        hp = other.ckpt.get("hyper_parameters") or {}
        for key in ("model", "tokenizer"):
            if hp.get(key) != base_hp.get(key):
                raise CheckpointError(f"cannot soup {first.name} and {other.name}: their {key} differs "
                                      f"({_difference(base_hp.get(key), hp.get(key))})")
        if first.state.keys() != other.state.keys():
            extra = sorted(set(first.state) ^ set(other.state))[:3]
            raise CheckpointError(f"cannot soup {first.name} and {other.name}: different parameters ({extra})")
        for k, t in first.state.items():
            if t.shape != other.state[k].shape or t.dtype != other.state[k].dtype:
                raise CheckpointError(f"cannot soup {first.name} and {other.name}: {k} is {tuple(t.shape)} {t.dtype} "
                                      f"vs {tuple(other.state[k].shape)} {other.state[k].dtype}")


def _difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ", ".join(f"{k}={a.get(k)!r} vs {b.get(k)!r}" if len(repr(a.get(k))) < 40 else f"{k} differs" for k in keys[:3])
    return "different settings"


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean: floating tensors averaged in fp32 and cast back; integer buffers from the first."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = torch.zeros(first.shape, dtype=torch.float32)
            for s in states:
                total += s[key].float()
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def greedy_soup(ingredients: list[Ingredient], loss_of: Callable[[dict], float]) -> tuple[dict, list[str], float]:
    """Wortsman et al.'s greedy soup, by held-out loss. Returns the state, its members, its loss."""
    ranked = sorted(ingredients, key=lambda i: i.metrics["val_loss"])
    members, best_loss = [ranked[0]], ranked[0].metrics["val_loss"]
    for candidate in ranked[1:]:
        loss = loss_of(average([m.state for m in [*members, candidate]]))
        log.info("greedy soup: adding %s gives %.4f (current %.4f)", candidate.name, loss, best_loss)
        if loss < best_loss:
            members.append(candidate)
            best_loss = loss
    return average([m.state for m in members]), [m.name for m in members], best_loss


def soup_checkpoint(base: Ingredient, state: dict, method: str, members: list[Ingredient]) -> dict:
    """A checkpoint `load_model`, `generate` and `eval` accept; it records how it was made.
    (No optimizer state: a soup is a model to use or fine-tune from with init_from, not a run to resume.)"""
    return {
        "state_dict": state,
        "hyper_parameters": base.ckpt["hyper_parameters"],
        "global_step": base.ckpt.get("global_step", 0),
        "pytorch-lightning_version": base.ckpt.get("pytorch-lightning_version"),
        "soup": {"method": method, "ingredients": [str(m.path) for m in members]},
    }
