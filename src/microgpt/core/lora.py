"""LoRA fine-tuning through `peft`: low-rank adapters on the GPT's linear layers, the rest frozen;
merged back into plain weights to evaluate, generate, soup or export."""

from __future__ import annotations

from torch import nn

from microgpt.core.errors import ConfigError


def require_peft():
    try:
        import peft
    except ImportError as e:
        raise ConfigError("lora=... needs peft: pip install 'microgpt[lora]' (or pip install peft)") from e
    return peft


def lora_targets(model: nn.Module, names: list[str] | None) -> list[str]:
    """The blocks' linear layers whose last name part is in `names` (null: every one but MoE routers)."""
    found = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.startswith("transformer.h.") and "router" not in n]
    if names is not None:
        found = [n for n in found if n.rsplit(".", 1)[-1] in set(names)]
    if not found:
        present = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"lora.targets={names} matches none of the GPT's linear layers; choose from {present}")
    return found


def add_lora(model: nn.Module, settings: dict) -> None:
    """Adapters of rank `r` (scale `alpha / r`) on `targets`, in place; every other weight frozen."""
    peft = require_peft()
    r = settings.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"lora.r={r!r} must be an integer >= 1 (8 or 16 are usual)")
    config = peft.LoraConfig(r=r, lora_alpha=settings.get("alpha") or 2 * r, lora_dropout=settings.get("dropout") or 0.0,
                             target_modules=lora_targets(model, settings.get("targets")))
    peft.inject_adapter_in_model(config, model)
    if settings.get("train_embeddings", True):
        # New tokens (the chat template's) start as copies of the mean embedding: frozen, the model could
        # never tell them apart. So the embedding and the head train in full, as peft's modules_to_save.
        for name, p in model.named_parameters():
            if name in ("transformer.wte.weight", "lm_head.weight"):
                p.requires_grad_(True)


def has_lora(state: dict) -> bool:
    return any(".lora_A." in k for k in state)


def merge_lora(model: nn.Module) -> nn.Module:
    """Each adapted layer replaced by its base layer with the adapter's update added in (peft's merge)."""
    from peft.tuners.lora import LoraLayer

    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    return model
