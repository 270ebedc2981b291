"""Tiny local models for generator tests: built in a session temp dir, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "Cross-site scripting (XSS) lets an attacker inject script into pages viewed by other users.",
    "SQL injection happens when untrusted input is concatenated into a database query.",
    "Use parameterized queries and output encoding. Validate input on the server side.",
    "PowerShell is a command line shell; attackers abuse it for execution (T1059.001).",
    "Buffer overflows corrupt memory; bounds checks and ASLR make exploitation harder.",
    "Unicode café naïve 日本語 emoji 🔐 test lines keep multi-byte characters in the vocabulary.",
] * 20


@pytest.fixture(scope="session")
def ghostlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny GhostLM (safetensors + config.json) and a trained tokenizer.json in one directory."""
    import torch

    from ghostlm import GhostLM, GhostLMConfig, save_safetensors, train_tokenizer

    d = tmp_path_factory.mktemp("ghostlm")
    tok = train_tokenizer(CORPUS, vocab_size=400, out_path=d / "tokenizer.json")
    torch.manual_seed(0)
    cfg = GhostLMConfig(
        vocab_size=tok.vocab_size,
        context_length=128,
        d_model=32,
        n_heads=2,
        n_layers=1,
        d_ff=64,
        use_rope=True,
        use_swiglu=True,
        use_rmsnorm=True,
        dropout=0.0,
    )
    save_safetensors(GhostLM(cfg).eval(), d)
    return d


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _save_hf(d: Path, chat_template: str | None) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=chat_template,
    )
    hf_tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama with a ChatML-style template whose specials a user could try to type."""
    return _save_hf(tmp_path_factory.mktemp("hf_chat"), CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def hf_plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_hf(tmp_path_factory.mktemp("hf_plain"), None)
