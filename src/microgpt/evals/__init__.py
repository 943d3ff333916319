"""Evaluations of a GPT: HellaSwag (completion style) and held-out loss / perplexity."""

from microgpt.evals.hellaswag import HellaSwagResult, evaluate_hellaswag
from microgpt.evals.perplexity import HeldOutLoss, held_out_loss

__all__ = ["HellaSwagResult", "HeldOutLoss", "evaluate_hellaswag", "held_out_loss"]
