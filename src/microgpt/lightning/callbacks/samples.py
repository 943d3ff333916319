"""Generate text from fixed prompts every N steps and at the end of training.

Rank 0 generates and writes; every rank calls in, since under FSDP gathering the full weights
is a collective (see `microgpt.lightning.module.unsharded`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from microgpt.core.errors import MicroGPTError
from microgpt.core.model import GPT
from microgpt.core.sampling import check_sampling
from microgpt.core.tokenizer import Tokenizer
from microgpt.lightning.module import unsharded

log = logging.getLogger(__name__)


class TextSamples(L.Callback):
    def __init__(
        self,
        prompts: list[str],
        max_new_tokens: int = 200,
        every_n_steps: int = 0,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 1337,
        filename: str = "samples.txt",
    ) -> None:
        check_sampling(temperature, top_k, None)  # now, not after hours of training
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.every_n_steps = every_n_steps
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.filename = filename
        self._last_step = -1
        self._table_rows: list[list] = []  # every sample so far: W&B tables are replaced, not appended

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.write_samples(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self.write_samples(trainer, pl_module)

    def write_samples(self, trainer: L.Trainer, pl_module) -> None:
        with unsharded(trainer, pl_module.model) as model:
            if not trainer.is_global_zero:
                return
            samples = self.generate(model, pl_module.tokenizer)
        out = Path(trainer.default_root_dir) / self.filename
        with out.open("a", encoding="utf-8") as f:
            for prompt, text in samples:
                f.write(f"=== step {trainer.global_step} | prompt {prompt!r}\n{prompt}{text}\n\n")
        for prompt, text in samples:
            log.info("sample at step %d:\n%s%s", trainer.global_step, prompt, text)
        self._table_rows += [[trainer.global_step, prompt, text] for prompt, text in samples]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["step", "prompt", "text"], data=self._table_rows,
                                step=trainer.global_step)

    def generate(self, model: GPT, tokenizer: Tokenizer) -> list[tuple[str, str]]:
        """(prompt, continuation) per prompt, sampled from `model` with this callback's settings."""
        device = model.transformer.wte.weight.device
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=device).manual_seed(self.seed)
        results = []
        try:
            for prompt in self.prompts:
                try:
                    ids = tokenizer.encode(prompt) or [tokenizer.eot]
                except MicroGPTError as e:  # e.g. a character the char vocabulary never saw
                    log.warning("sample prompt %r skipped: %s", prompt, e)
                    continue
                idx = torch.tensor([ids], dtype=torch.long, device=device)
                out = model.generate(idx, self.max_new_tokens, temperature=self.temperature,
                                     top_k=self.top_k, generator=generator)
                results.append((prompt, tokenizer.decode(out[0, len(ids):].tolist())))
        finally:
            model.train(was_training)
        return results
