"""GhostLM configuration: one dataclass, upstream field names, plus named presets.

The field list mirrors upstream ``ghostlm/config.py`` (joemunene-by/GhostLM @ ad292403) so that the
``config`` dict stored in an upstream trainer checkpoint (``dataclasses.asdict(config)``) loads as is.
Training/path/system fields are kept even though inference ignores them: a checkpoint re-saved by us
must still load upstream.

Preset choices (upstream names; values follow the upstream repo where it had them):

* ``ghost-tiny``       2 layers, d_model 256, 4 heads, d_ff 1024, ctx 256 - legacy architecture.
* ``ghost-small``      6 layers, d_model 512, 8 heads, d_ff 2048, ctx 1024 - legacy architecture.
* ``ghost-small-v0.5`` ghost-small + RoPE/SwiGLU/RMSNorm. Like upstream it sets ONLY those three flags,
                       so ``bias`` keeps its default (True): attention linears carry biases.
* ``ghost-wide-v0.9``  the released 81M shape: 6 layers, d_model 768, 12 heads, d_ff 3072,
                       RoPE+SwiGLU+RMSNorm, vocab 50264 (GPT-2 + 7 specials), ctx 512.
* ``ghost-base``       12 layers, d_model 768, 12 heads, 4 KV heads (GQA), QK-norm, RoPE/SwiGLU/RMSNorm,
                       ctx 1024.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class GhostLMConfig:
    # --- model architecture -------------------------------------------------------------------
    vocab_size: int = 50264  # 50257 GPT-2 BPE ids + 7 ghost special tokens
    context_length: int = 1024
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    bias: bool = True
    use_rope: bool = False
    rope_base: float = 10000.0
    use_swiglu: bool = False
    use_rmsnorm: bool = False
    use_flash_attention: bool = False  # upstream switch; we always use SDPA (matches within ~4e-7)
    n_kv_heads: int | None = None  # None -> n_heads (plain multi-head attention)
    use_qk_norm: bool = False
    # attn_gate / value_residual / use_moe exist upstream but are not implemented: GhostLM() refuses them
    # (NotImplementedError, surfaced by load_model as CheckpointError) rather than silently mis-computing.
    # intra_doc_mask only changes training (attention blocked across EOS inside packed sequences); ignored here.
    attn_gate: bool = False
    value_residual: bool = False
    intra_doc_mask: bool = False
    eos_token_id: int | None = None
    use_moe: bool = False
    n_experts: int = 4
    n_experts_active: int = 2
    moe_aux_loss_coef: float = 0.01
    # --- training (kept for round-tripping upstream checkpoints) --------------------------------
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    muon_momentum: float = 0.95
    cautious_wd: bool = False
    lr_schedule: str = "cosine"
    wsd_decay_frac: float = 0.2
    grad_accum_steps: int = 4
    warmup_steps: int = 2000
    max_steps: int = 100000
    eval_interval: int = 500
    save_interval: int = 1000
    best_weights_only: bool = False
    # --- paths / system --------------------------------------------------------------------------
    data_dir: str = "data/processed"
    checkpoint_dir: str = "checkpoints"
    log_dir: str = "logs"
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 42
    use_wandb: bool = False
    wandb_project: str = "ghostlm"
    use_compile: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.use_rope and self.head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

    # Derived values: properties, not fields, so asdict() stays identical to upstream's.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def swiglu_hidden(self) -> int:
        """Upstream SwiGLU width: 2/3 of d_ff (keeps params ~equal to a GELU FFN), rounded up to 64."""
        return swiglu_hidden_size(self.d_ff)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GhostLMConfig:
        """Build from an upstream ``asdict(config)``; unknown keys (newer upstream) are dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            logger.warning("GhostLMConfig: ignoring unknown config fields: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GhostLMConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_params_estimate(self) -> int:
        """Unique parameter count (tied embedding counted once) without building the model."""
        d, hd = self.d_model, self.head_dim
        qkv_out = (self.n_heads + 2 * self.kv_heads) * hd
        attn = d * qkv_out + d * d + ((qkv_out + d) if self.bias else 0)
        attn += 2 * hd if self.use_qk_norm else 0
        if self.use_swiglu:
            ffn = 3 * d * self.swiglu_hidden
        else:
            ffn = 2 * d * self.d_ff + ((self.d_ff + d) if self.bias else 0)
        norm = d if self.use_rmsnorm else 2 * d
        block = attn + ffn + 2 * norm
        pos = 0 if self.use_rope else self.context_length * d
        return self.vocab_size * d + pos + self.n_layers * block + norm


def swiglu_hidden_size(d_ff: int, multiple: int = 64) -> int:
    hidden = int(d_ff * 2 / 3)
    return multiple * ((hidden + multiple - 1) // multiple)


_MODERN = {"use_rope": True, "use_swiglu": True, "use_rmsnorm": True}

PRESETS: dict[str, dict[str, Any]] = {
    "ghost-tiny": {"n_layers": 2, "d_model": 256, "n_heads": 4, "d_ff": 1024, "context_length": 256},
    "ghost-small": {"n_layers": 6, "d_model": 512, "n_heads": 8, "d_ff": 2048, "context_length": 1024},
    "ghost-small-v0.5": {
        "n_layers": 6,
        "d_model": 512,
        "n_heads": 8,
        "d_ff": 2048,
        "context_length": 1024,
        **_MODERN,
    },
    "ghost-wide-v0.9": {
        "n_layers": 6,
        "d_model": 768,
        "n_heads": 12,
        "d_ff": 3072,
        "context_length": 512,
        "vocab_size": 50264,
        **_MODERN,
    },
    "ghost-base": {
        "n_layers": 12,
        "d_model": 768,
        "n_heads": 12,
        "n_kv_heads": 4,
        "use_qk_norm": True,
        "d_ff": 3072,
        "context_length": 1024,
        **_MODERN,
    },
}
