"""Model soups (Wortsman et al. 2022): average the weights of models fine-tuned from one start.

`uniform` is the element-wise mean of every ingredient; `greedy` adds ingredients in order of
held-out loss, keeping each only if the running average's held-out loss improves. Every
ingredient and every soup is evaluated on the same held-out data, and the report says whether
the soup beat its ingredients. `SoupCallback` does all of this at the end of a Hydra multirun;
`python -m microgpt.soup ckpts=[...]` does it for any checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command
from microgpt.core.errors import ConfigError
from microgpt.souping.average import read_ingredients
from microgpt.souping.evaluate import Evaluator
from microgpt.souping.report import make_soup, report_markdown, soup_files

log = logging.getLogger(__name__)


@hydra_command("soup")
def main(cfg: DictConfig) -> None:
    """`python -m microgpt.soup ckpts=[a.ckpt,b.ckpt,c.ckpt] method=uniform|greedy data=...`"""
    from microgpt.io.config import to_plain
    from microgpt.io.outputs import check_outputs

    paths = to_plain(cfg.ckpts)
    if not isinstance(paths, list) or not paths:
        raise ConfigError("ckpts must be a list of checkpoint paths: ckpts=[a.ckpt,b.ckpt]")
    check_outputs("out", soup_files(Path(cfg.out)), overwrite=bool(cfg.overwrite))  # before any evaluation
    ingredients = read_ingredients(paths)
    evaluator = Evaluator(ingredients[0], cfg.data, cfg.seed, cfg.val_batches, to_plain(cfg.hellaswag))
    report = make_soup(ingredients, evaluator, cfg.method, Path(cfg.out))
    print(report_markdown(report))
    print(f"soup written to {report['checkpoint']}")


if __name__ == "__main__":
    main()
