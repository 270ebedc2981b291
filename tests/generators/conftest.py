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
    cfg = GhostLMConfig(vocab_size=tok.vocab_size, context_length=128, d_model=32, n_heads=2, n_layers=1,
                        d_ff=64, use_rope=True, use_swiglu=True, use_rmsnorm=True, dropout=0.0)
    save_safetensors(GhostLM(cfg).eval(), d)
    return d
