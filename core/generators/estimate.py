"""Token-count estimates for backends whose real tokenizer is not available locally.

Both estimates err on the high side so that a prompt budgeted with them fits the real context.
"""

from __future__ import annotations

import math
import re

_WORD_PIECES = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def utf8_bytes_estimate(text: str) -> int:
    """ceil(UTF-8 bytes / 3): BPE vocabularies average about 4 bytes per token on English, ~3 on code/CJK."""
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 3)


def word_piece_estimate(text: str) -> int:
    """Each word counts ceil(len/4) pieces (long words split), each punctuation mark one."""
    return sum(
        max(1, math.ceil(len(m) / 4)) if m[0].isalnum() or m[0] == "_" else 1
        for m in _WORD_PIECES.findall(text)
    )
