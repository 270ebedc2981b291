"""Shared fixtures for the conversation-core tests."""

from __future__ import annotations

import pytest
from tokenizers import ByteLevelBPETokenizer

from tests.core.core_doubles import BPEGenerator, train_tokenizer


@pytest.fixture(scope="session")
def bpe_tokenizer() -> ByteLevelBPETokenizer:
    return train_tokenizer()


@pytest.fixture
def bpe_generator(bpe_tokenizer: ByteLevelBPETokenizer) -> BPEGenerator:
    return BPEGenerator(bpe_tokenizer)
