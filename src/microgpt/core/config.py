"""GPTConfig: every architecture microgpt builds, as plain settings (`model.*` in the configs).

The defaults are the original RoPE GPT (GPT-2's block with rotary positions); the other values
select the parts modern families use (RMSNorm, post-norm, QK-norm, GQA/MQA, multi-head latent
attention, SwiGLU / ReLU^2, mixture of experts, scaled RoPE). Each check names the setting and the
fix, because these are what a user types on the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from microgpt.core.errors import ConfigError, require_positive_int

POSITION_SCHEMES = ("rope", "learned", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")
QK_NORMS = ("none", "head", "full")
MLPS = ("gelu_tanh", "gelu", "swiglu", "relu2")
ATTENTIONS = ("mha", "mla")
ROPE_SCALINGS = (None, "linear", "llama3", "yarn")
ROUTERS = ("softmax", "sigmoid")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the context window, in tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in every linear layer and LayerNorm
    pos_emb: str = "rope"  # rope | learned (GPT-2's own weights need learned) | none
    rope_base: float = 10000.0
    vocab_multiple: int = 64  # the embedding is padded to a multiple of this: faster matmuls
    head_dim: int | None = None  # None: n_embd // n_head
    n_kv_head: int | None = None  # None: n_head; fewer: grouped-query attention (1: multi-query)
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # post: OLMo 2's norm of each sublayer's output, before the residual add
    qk_norm: str = "none"  # head: RMSNorm per head (Qwen3); full: over all heads' q and k (OLMo 2)
    mlp: str = "gelu_tanh"
    intermediate_size: int | None = None  # None: 4 * n_embd
    tie_embeddings: bool = True
    rope_scaling: str | None = None  # linear | llama3 | yarn: longer contexts than trained
    rope_factor: float = 1.0
    rope_original_block_size: int | None = None  # the context the scaled RoPE was trained at
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_beta_fast: float = 32.0  # yarn
    rope_beta_slow: float = 1.0  # yarn
    attention: str = "mha"  # mha (GQA / MQA through n_kv_head) | mla (DeepSeek-V2/V3 latent attention)
    q_lora_rank: int | None = None  # mla: None projects queries at full rank
    kv_lora_rank: int = 512  # mla: width of the compressed key/value latent (what the cache stores)
    qk_nope_head_dim: int = 128  # mla: per-head query/key features without positions
    qk_rope_head_dim: int = 64  # mla: per-head features that carry RoPE (one key head shared by all)
    v_head_dim: int = 128  # mla
    n_experts: int = 0  # 0: a dense MLP in every layer
    n_experts_per_tok: int = 2
    n_shared_experts: int = 0  # experts every token goes through, besides its routed ones
    moe_intermediate_size: int | None = None  # None: the dense MLP's hidden size
    moe_every: int = 1  # layer i is MoE when i >= moe_first_dense and (i + 1) % moe_every == 0
    moe_first_dense: int = 0  # DeepSeek's first_k_dense_replace
    router: str = "softmax"  # softmax (Mixtral, Qwen3-MoE) | sigmoid (DeepSeek-V3)
    router_norm_topk: bool = True  # renormalise the chosen experts' weights to sum to 1
    aux_loss_weight: float = 0.01  # load-balancing loss (Switch Transformer)
    z_loss_weight: float = 0.001  # router z-loss (ST-MoE)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            require_positive_int(f"model.{name}", getattr(self, name))
        for name in ("head_dim", "n_kv_head", "intermediate_size", "moe_intermediate_size",
                     "rope_original_block_size", "q_lora_rank"):
            if getattr(self, name) is not None:
                require_positive_int(f"model.{name}", getattr(self, name))
        self._check_choices()
        self._check_attention()
        self._check_moe()
        self._check_numbers()

    def _check_choices(self) -> None:
        if self.qk_norm in (None, False):
            self.qk_norm = "none"
        for name, choices in (("pos_emb", POSITION_SCHEMES), ("norm", NORMS), ("norm_placement", NORM_PLACEMENTS),
                              ("qk_norm", QK_NORMS), ("mlp", MLPS), ("attention", ATTENTIONS),
                              ("rope_scaling", ROPE_SCALINGS), ("router", ROUTERS)):
            if getattr(self, name) not in choices:
                shown = ", ".join("null" if c is None else c for c in choices)
                raise ConfigError(f"model.{name} must be one of {shown}; got {getattr(self, name)!r}")

    def _check_attention(self) -> None:
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}), "
                f"or set model.head_dim"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.kv_heads}): "
                f"each key/value head serves a whole group of query heads; use model.n_kv_head="
                f"{'|'.join(str(d) for d in range(1, self.n_head + 1) if self.n_head % d == 0)}"
            )
        if self.attention == "mla":
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                require_positive_int(f"model.{name}", getattr(self, name))
            for name in ("kv_lora_rank", "q_lora_rank"):
                rank = getattr(self, name)
                if rank is not None and rank >= self.n_embd:
                    raise ConfigError(
                        f"model.{name} ({rank}) must be below model.n_embd ({self.n_embd}): "
                        f"a low-rank projection narrower than the width"
                    )
            if self.n_kv_head is not None or self.qk_norm != "none":
                raise ConfigError("model.attention=mla takes neither model.n_kv_head nor model.qk_norm (set them null / none)")
        if self.pos_emb == "rope" and self.rope_dim % 2:
            raise ConfigError(f"RoPE needs an even number of rotated features per head, got {self.rope_dim}")

    def _check_moe(self) -> None:
        if not self.n_experts:
            return
        require_positive_int("model.n_experts", self.n_experts)
        require_positive_int("model.n_experts_per_tok", self.n_experts_per_tok)
        require_positive_int("model.moe_every", self.moe_every)
        if self.n_experts_per_tok > self.n_experts:
            raise ConfigError(
                f"model.n_experts_per_tok ({self.n_experts_per_tok}) must be at most model.n_experts "
                f"({self.n_experts}): lower the top-k or add experts"
            )
        if not isinstance(self.n_shared_experts, int) or self.n_shared_experts < 0:
            raise ConfigError(f"model.n_shared_experts must be an integer >= 0, got {self.n_shared_experts!r}")
        if not any(self.is_moe_layer(i) for i in range(self.n_layer)):
            raise ConfigError(
                f"model.n_experts={self.n_experts} but no layer is MoE with moe_every={self.moe_every} and "
                f"moe_first_dense={self.moe_first_dense} over {self.n_layer} layers"
            )

    def _check_numbers(self) -> None:
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("rope_base", "norm_eps", "rope_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive number, got {value!r}")
        for name in ("aux_loss_weight", "z_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"model.{name} must be a number >= 0, got {value!r}")
        if self.rope_scaling in ("llama3", "yarn") and self.rope_original_block_size is None:
            raise ConfigError(f"model.rope_scaling={self.rope_scaling} needs model.rope_original_block_size "
                              f"(the context the model was first trained at)")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def head_size(self) -> int:
        """Features per attention head (query/key; MLA: the nope and rope parts together)."""
        if self.attention == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def rope_dim(self) -> int:
        """Features per head that RoPE rotates."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_size

    @property
    def hidden_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.n_embd

    @property
    def expert_hidden_size(self) -> int:
        return self.moe_intermediate_size if self.moe_intermediate_size is not None else self.hidden_size

    def is_moe_layer(self, index: int) -> bool:
        return bool(self.n_experts) and index >= self.moe_first_dense and (index + 1) % self.moe_every == 0

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
