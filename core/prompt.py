"""Builds the `PromptSpec` for a turn, and cleans user text before anything else sees it.

Role-token strings (`<|ghost_end|>`, `<|im_start|>`, `[INST]`…) in user text, history or documents are kept
here. GhostLM and Hugging Face backends encode content as plain text, never as special tokens. OpenAI-compatible
servers (llama.cpp, vLLM…) may parse special tokens inside content, where such a string could forge a turn, so
that backend neutralises them on the way out (core/generators/markers.py). What IS removed here: control
characters (except newline and tab), which break rendering and some databases, and lone UTF-16 surrogates, which
are not valid Unicode text at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

from core.generators.base import ChatTurn, PromptSpec
from core.types import Source
from core.understanding import TASKS

EMPTY_NOTICE = "I couldn't find any text in your message. Please send your question as plain text."

# C0 and C1 controls and DEL, except \t and \n (\r is normalised to \n first).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def sanitize_text(text: str) -> str:
    """Remove control characters and lone surrogates; normalise line ends; strip outer whitespace.

    A valid surrogate PAIR that arrived as two code points (a bad UTF-16 decode upstream) is joined into its
    character instead of being dropped.
    """
    if _SURROGATES.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "ignore")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    return text.strip()


def history_turns(messages: Sequence[tuple[str, str]]) -> tuple[ChatTurn, ...]:
    """(role, text) oldest→newest → whole user/assistant pairs (orphans, e.g. a lone question, are skipped)."""
    turns: list[ChatTurn] = []
    i = 0
    while i < len(messages) - 1:
        (r1, t1), (r2, t2) = messages[i], messages[i + 1]
        if r1 == "user" and r2 == "assistant":
            turns += [ChatTurn("user", t1), ChatTurn("assistant", t2)]
            i += 2
        else:
            i += 1
    return tuple(turns)


def number_passages(passages: Sequence[Source]) -> tuple[Source, ...]:
    """Renumber as [1]..[n] in rank order (the index a citation in the answer refers to)."""
    return tuple(p if p.index == i else replace(p, index=i) for i, p in enumerate(passages, 1))


class PromptBuilder:
    """System text from settings (+ per-user preferences), numbered passages, history and the question."""

    def __init__(self, system_prompt: str) -> None:
        self.system_prompt = system_prompt.strip()

    def system_text(self, prefs: Mapping[str, str] | None = None) -> str:
        prefs = prefs or {}
        if prefs.get("style") == "detailed":
            return f"{self.system_prompt} Give a thorough answer with examples."
        if prefs.get("style") == "brief":
            return f"{self.system_prompt} Answer in at most three sentences."
        return self.system_prompt

    def build(
        self,
        question: str,
        *,
        passages: Sequence[Source] = (),
        history: Sequence[tuple[str, str]] = (),
        prefs: Mapping[str, str] | None = None,
        intent: str = "",
    ) -> PromptSpec:
        system = self.system_text(prefs)
        task = TASKS.get(intent, "") if passages and intent != "define" else ""
        if task:
            # Say what the user asked for, so a model answers that ("list the detections"), not a summary.
            system = f"{system} Task: {task}, from the passages."
        return PromptSpec(
            system=system,
            passages=number_passages(passages),
            history=history_turns(history),
            question=question,
            intent=intent,
        )
