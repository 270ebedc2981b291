"""Role markers of the common chat templates, neutralised before text goes to an OpenAI-compatible server.

llama.cpp's server, vLLM and others parse special tokens inside message *content*, so a `<|im_start|>system`
typed by a user, kept in history, or found in an indexed document could forge a turn there. Our own backends
(GhostLM, Hugging Face) encode content as plain text and need none of this.

A marker is neutralised by a ZERO WIDTH SPACE after its first character: the text reads the same, but it no
longer matches the special token's string, so the server's tokenizer encodes it as ordinary text.
"""

from __future__ import annotations

import re

ZWSP = "\u200b"

_MARKERS = re.compile(
    "|".join(
        [
            r"<[|\uff5c][^<>\n]{0,64}?[|\uff5c]>",  # ChatML, Llama 3/4, Phi, GPT-OSS, Command-R, DeepSeek (fullwidth)
            r"\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS|TOOL_CONTENT)\]",  # Llama 2, Mistral
            r"<</?SYS>>",  # Llama 2 system block
            r"</?s>",  # SentencePiece BOS/EOS (Llama 2, Mistral)
            r"<(?:start_of_turn|end_of_turn|bos|eos|unk|pad)>",  # Gemma
            r"<(?:BOS|EOS)_TOKEN>",  # Command-R
        ]
    )
)


def neutralize_markers(text: str) -> str:
    """`text` with every chat-template role/control marker broken by a zero-width space."""
    return _MARKERS.sub(lambda m: m.group(0)[0] + ZWSP + m.group(0)[1:], text)


def has_marker(text: str) -> bool:
    return _MARKERS.search(text) is not None
