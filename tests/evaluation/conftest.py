"""Shared fixtures: a loopback fake OpenAI-compatible judge with scripted, thread-safe reply modes."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable

import pytest
import torch

from evaluation.judges import OpenAIJudge
from evaluation.rubrics import load_rubrics
from ghostlm import GhostLM, GhostLMConfig, save_safetensors, train_tokenizer
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest, Reply

TITLE = re.compile(r"on one criterion: (.+?)\.\n")
QUESTION = re.compile(r"QUESTION:\n(.*?)\n\n", re.S)


def criterion_of(req: RecordedRequest) -> str:
    """Map the criterion title in the judge prompt back to its name (via the shipped rubric file)."""
    titles = {c.title: c.name for c in load_rubrics().criteria.values()}
    return titles[TITLE.search(req.messages[-1]["content"]).group(1)]


def question_of(req: RecordedRequest) -> str:
    return QUESTION.search(req.messages[-1]["content"]).group(1)


class ScriptedJudge:
    """Reply handler: for each (question, criterion) prompt, the k-th call gets the k-th scripted reply.

    ``script(question, criterion) -> list[str]`` gives the replies; calls beyond the list repeat the last one.
    The multiset of replies per prompt is fixed, so statistics are exact whatever the call order.
    """

    def __init__(self, script: Callable[[str, str], list[str]]) -> None:
        self.script = script
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()

    def __call__(self, req: RecordedRequest) -> Reply:
        key = (question_of(req), criterion_of(req))
        with self._lock:
            k = self.calls[key]
            self.calls[key] += 1
        replies = self.script(*key)
        return Reply(replies[min(k, len(replies) - 1)])


def rating(score: int, reason: str = "ok.") -> str:
    return json.dumps({"score": score, "reason": reason})


@pytest.fixture
def fake_server():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def make_judge(fake_server):
    judges: list[OpenAIJudge] = []

    def make(**kw) -> OpenAIJudge:
        kw.setdefault("retry_backoff", 0.0)
        j = OpenAIJudge(fake_server.base_url, "fake-judge", **kw)
        judges.append(j)
        return j

    yield make
    for j in judges:
        await j.close()


@pytest.fixture(scope="session")
def tiny_ghostlm(tmp_path_factory):
    torch.manual_seed(0)
    texts = [
        '{"score": 1} {"score": 2} {"score": 3} {"score": 4} {"score": 5} reason answer question'
    ] * 50 + ["Question: Which port does HTTPS use? A. 443 B. 80 C. 22 D. 25 Answer: 443"] * 20
    d = tmp_path_factory.mktemp("ghost")
    tok = train_tokenizer(texts, 300, d / "tokenizer.json")
    cfg = GhostLMConfig(
        vocab_size=tok.vocab_size, context_length=256, d_model=32, n_heads=2, n_layers=2, d_ff=64, dropout=0.0
    )
    model = GhostLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # peaked, so the expectation is far from a uniform 3.0
    model.eval()
    save_safetensors(model, d)
    return model, tok, d
