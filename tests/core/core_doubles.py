"""Test doubles for the conversation core: a generator with a REAL tokenizer, a tiny retriever, a recording sink.

Only the model and the retriever are doubles; everything in core/ under test is the real code.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tokenizers import ByteLevelBPETokenizer

from core.generators.base import GenerationParams, PromptSpec
from core.generators.render import render_turns
from core.types import Answer, Source

_CORPUS = [
    "Cross-site scripting (XSS, CWE-79) lets attackers inject scripts into pages viewed by other users.",
    "SQL injection (CWE-89) happens when a query is built by concatenating untrusted strings.",
    "MITRE ATT&CK technique T1059.001 covers PowerShell command and scripting interpreter abuse.",
    "Use parameterised queries, output encoding and a content security policy to defend web apps.",
    "The user asked a question and the assistant answered it with numbered passages [1] [2].",
]


def train_tokenizer() -> ByteLevelBPETokenizer:
    """A small byte-level BPE (any unicode string encodes; no special tokens, so role strings are plain)."""
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(_CORPUS * 20, vocab_size=420, min_frequency=2, show_progress=False)
    return tok


def render_texts(spec: PromptSpec) -> list[str]:
    """The project's one prompt layout (system + numbered passages in the FIRST user turn), as plain texts."""
    return [turn.content for turn in render_turns(spec)]


class BPEGenerator:
    """A Generator whose token counts come from a real BPE tokenizer; `stream` replays a scripted answer."""

    name = "bpe-test"

    def __init__(
        self,
        tokenizer: ByteLevelBPETokenizer,
        *,
        context_length: int = 512,
        answer: str = "XSS is script injection [1].",
        delay_s: float = 0.0,
        fail: bool = False,
        ignore_stop: bool = False,
    ) -> None:
        self.tok = tokenizer
        self.context_length = context_length
        self.answer = answer
        self.delay_s = delay_s
        self.fail = fail
        self.ignore_stop = ignore_stop
        self.calls: list[PromptSpec] = []
        self.params: list[GenerationParams] = []
        self.threads: set[str] = set()
        self.running = threading.Event()
        self.closed = False

    def _n(self, text: str) -> int:
        return len(self.tok.encode(text).ids)

    def count_tokens(self, text: str) -> int:
        return self._n(text)

    def prompt_tokens(self, spec: PromptSpec) -> int:
        # GhostLM-like: USER/ASSISTANT + END around every turn, a final ASSISTANT (and BOS).
        return 2 + sum(self._n(c) + 2 for c in render_texts(spec))

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        self.calls.append(spec)
        self.params.append(params)
        self.threads.add(threading.current_thread().name)
        self.running.set()
        try:
            if self.fail:
                raise RuntimeError("model exploded (api_key=sk-SECRET)")
            for word in self.answer.split(" "):
                deadline = time.monotonic() + self.delay_s
                while time.monotonic() < deadline:
                    if should_stop() and not self.ignore_stop:
                        return
                    time.sleep(0.005)
                if should_stop() and not self.ignore_stop:
                    return
                yield word + " "
        finally:
            self.running.clear()

    def close(self) -> None:
        self.closed = True


class NullGenerator:
    """Answers instantly with a fixed short text; counts tokens by whitespace (benchmarks, worker tests)."""

    name = "null"

    def __init__(self, answer: str = "ok [1]", context_length: int = 512) -> None:
        self.answer = answer
        self.context_length = context_length

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, spec: PromptSpec) -> int:
        return 2 + sum(self.count_tokens(c) + 2 for c in render_texts(spec))

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        yield self.answer

    def close(self) -> None:
        pass


class ListRetriever:
    """`search` over a fixed list: passages whose words overlap the query, best first."""

    def __init__(self, sources: Sequence[Source] = ()) -> None:
        self.sources = list(sources)
        self.queries: list[str] = []
        self.viewers: list[str | None] = []

    async def search(self, query: str, k: int = 4, *, viewer: str | None = None) -> list[Source]:
        self.queries.append(query)
        self.viewers.append(viewer)
        words = set(re.findall(r"\w+", query.lower())) - {"what", "is", "a", "the", "and", "how"}
        scored = [(len(words & set(re.findall(r"\w+", s.text.lower()))), s) for s in self.sources]
        hits = [s for score, s in sorted(scored, key=lambda x: -x[0]) if score > 0][:k]
        return [
            Source(index=i, ref=s.ref, source=s.source, title=s.title, url=s.url, text=s.text)
            for i, s in enumerate(hits, 1)
        ]


@dataclass
class RecordingSink:
    """A ReplySink that records every call, in order."""

    events: list[tuple[str, object]] = field(default_factory=list)
    next_id: int = 1000
    final_gate: asyncio.Event | None = None

    async def notice(self, text: str, *, ephemeral: bool = False) -> None:
        self.events.append(("notice", text))

    async def queued(self, position: int, eta_seconds: float) -> None:
        self.events.append(("queued", (position, eta_seconds)))

    async def started(self) -> None:
        self.events.append(("started", None))

    async def partial(self, text_so_far: str) -> None:
        self.events.append(("partial", text_so_far))

    async def final(self, answer: Answer) -> Sequence[str]:
        self.events.append(("final", answer))
        self.next_id += 1
        return [str(self.next_id)]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    def notices(self) -> list[str]:
        return [str(v) for k, v in self.events if k == "notice"]

    def finals(self) -> list[Answer]:
        return [v for k, v in self.events if k == "final"]  # type: ignore[misc]
