"""GhostLM: a small transformer language model, checkpoint-compatible with upstream joemunene-by/GhostLM.

A standalone library: imports nothing from the rest of the bot. See model.py for the architecture.
"""

from .checkpoint import CheckpointError, load_model, save_safetensors
from .config import PRESETS, GhostLMConfig
from .engine import Engine, GenerationStream, TrimInfo, full_recompute_generate
from .mcq import option_logprob, option_logprobs, score_token_distribution
from .model import BatchKVCache, GhostLM, KVCache
from .sampling import GREEDY, SamplingParams
from .tokenizer import (
    END_ID,
    GPT2_SPECIAL,
    GPT2Tokenizer,
    HFTokenizer,
    SpecialIds,
    StreamDecoder,
    Tokenizer,
    TokenizerUnavailableError,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "END_ID",
    "GPT2_SPECIAL",
    "GREEDY",
    "PRESETS",
    "BatchKVCache",
    "CheckpointError",
    "Engine",
    "GPT2Tokenizer",
    "GenerationStream",
    "GhostLM",
    "GhostLMConfig",
    "HFTokenizer",
    "KVCache",
    "SamplingParams",
    "SpecialIds",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerUnavailableError",
    "TrimInfo",
    "full_recompute_generate",
    "load_model",
    "load_tokenizer",
    "option_logprob",
    "option_logprobs",
    "save_safetensors",
    "score_token_distribution",
    "train_tokenizer",
]
