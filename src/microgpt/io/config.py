"""Composed configs as plain Python values: what checkpoints and hyper-parameters store."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def to_plain(cfg) -> dict | list | object:
    """A resolved, plain-Python copy of a (sub)config: what checkpoints and hyper-parameters store."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
