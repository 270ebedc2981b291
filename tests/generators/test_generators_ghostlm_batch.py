"""The GenerationWorker with continuous batching over a real (tiny) GhostLM, and with a scripted batch session.

- batching keeps each request's output identical to one-at-a-time (per-request seeds and penalties);
- cancel and timeout mid-batch leave the other rows running to their normal end;
- a full batch queues the rest and reports positions counted beyond the batch;
- MAX_BATCH=1 is the old one-at-a-time path.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import pytest

from core.generators.base import BatchOutput, GenerationParams, PromptSpec, StreamSession
from core.generators.ghostlm_backend import GhostLMGenerator
from core.worker import GenerationHandle, GenerationWorker, Piece, Queued, Started


def spec(question: str) -> PromptSpec:
    return PromptSpec(system="Be concise.", passages=(), history=(), question=question)


def params(seed: int, **kw: object) -> GenerationParams:
    base: dict[str, object] = dict(max_new_tokens=24, temperature=1.0, top_k=0, top_p=1.0, seed=seed)
    base.update(kw)
    return GenerationParams(**base)  # type: ignore[arg-type]  # **base mixes value types


async def collect(handle: GenerationHandle) -> list[object]:
    return [event async for event in handle]


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, Piece))


QUESTIONS = [
    "What is XSS?",
    "SQL injection, briefly",
    "x",
    "Explain buffer overflows and ASLR in depth please",
    "hi",
]
PARAMS = [
    params(1),
    params(2, repetition_penalty=1.3),
    params(3, temperature=0.0),  # greedy
    params(4, top_k=5, top_p=0.8),
    params(5, max_new_tokens=3),
]


async def answers(gen: GhostLMGenerator, max_batch: int) -> tuple[list[str], list[str | None], int]:
    worker = GenerationWorker(gen, timeout_s=60, max_batch=max_batch)
    worker.start()
    handles = [worker.submit(f"u{i}", spec(q), p) for i, (q, p) in enumerate(zip(QUESTIONS, PARAMS))]
    events = await asyncio.gather(*(collect(h) for h in handles))
    capacity = worker.capacity
    await worker.shutdown()
    return [text_of(e) for e in events], [h.finish_reason for h in handles], capacity


async def test_batched_outputs_equal_one_at_a_time(ghostlm_dir: Path) -> None:
    gen = GhostLMGenerator(ghostlm_dir)
    alone, alone_reasons, cap1 = await answers(gen, 1)
    batched, reasons, cap = await answers(gen, 4)
    assert cap1 == 1 and cap == 4
    assert batched == alone and reasons == alone_reasons
    assert any(alone) and reasons[4] == "length"
    gen.close()


# --- a scripted batch session: the test decides when each step runs ------------------------------------------
class Gate:
    def __init__(self) -> None:
        self._sem = threading.Semaphore(0)

    def allow(self, steps: int) -> None:
        for _ in range(steps):
            self._sem.release()

    def wait(self) -> bool:
        return self._sem.acquire(timeout=10)


class ScriptedSession:
    """Each step emits the next word of every row; a row ends after `max_new_tokens` words."""

    def __init__(self, gate: Gate, capacity: int) -> None:
        self.capacity = capacity
        self.gate = gate
        self.rows: dict[Hashable, list[str]] = {}
        self.removed: list[Hashable] = []
        self.peak = 0

    def add(
        self, key: Hashable, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> None:
        self.rows[key] = [f"{spec.question}{i} " for i in range(params.max_new_tokens)]
        self.peak = max(self.peak, len(self.rows))

    def remove(self, key: Hashable) -> None:
        self.rows.pop(key, None)
        self.removed.append(key)

    def step(self) -> list[BatchOutput]:
        assert self.gate.wait(), "the test never allowed this step"
        out = []
        for key, words in list(self.rows.items()):
            word = words.pop(0)
            out.append(BatchOutput(key, word, None if words else "length"))
            if not words:
                del self.rows[key]
        return out

    def close(self) -> None:
        self.rows.clear()


class ScriptedGenerator:
    name = "scripted"
    context_length = 512

    def __init__(self, capacity: int) -> None:
        self.gate = Gate()
        self.capacity = capacity
        self.session: ScriptedSession | None = None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, spec: PromptSpec) -> int:
        return len(spec.question.split())

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        for i in range(params.max_new_tokens):
            assert self.gate.wait()
            if should_stop():
                return
            yield f"{spec.question}{i} "

    def open_batch(self, max_batch: int) -> ScriptedSession | StreamSession:
        if max_batch <= 1:
            return StreamSession(self)
        self.session = ScriptedSession(self.gate, min(max_batch, self.capacity))
        return self.session

    def close(self) -> None:
        pass


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_cancel_and_timeout_mid_batch_leave_the_others_running() -> None:
    gen = ScriptedGenerator(capacity=4)
    worker = GenerationWorker(gen, timeout_s=60, max_batch=4)
    worker.start()
    n = GenerationParams(max_new_tokens=6)
    handles = {q: worker.submit(q, spec(q), n) for q in "abcd"}
    collectors = {q: asyncio.create_task(collect(h)) for q, h in handles.items()}
    await until(lambda: worker.running == 4)
    gen.gate.allow(2)  # two steps: every row has two words
    await until(lambda: worker.steps == 2)
    assert worker.cancel("b")
    worker._expire(handles["c"])  # what the per-request timer does when it fires
    gen.gate.allow(10)
    results = {q: await t for q, t in collectors.items()}
    assert handles["b"].finish_reason == "cancelled" and handles["c"].finish_reason == "timeout"
    for q in "ad":
        assert text_of(results[q]).split() == [f"{q}{i}" for i in range(6)]
        assert handles[q].finish_reason == "length"
    assert len(text_of(results["b"]).split()) <= 3 and len(text_of(results["c"]).split()) <= 3
    assert gen.session is not None and set(gen.session.removed) >= {id(handles["b"]), id(handles["c"])}
    await worker.shutdown()


async def test_a_full_batch_queues_and_positions_count_beyond_the_batch() -> None:
    gen = ScriptedGenerator(capacity=2)
    worker = GenerationWorker(gen, timeout_s=60, max_batch=8, initial_duration_s=4)
    worker.start()
    first = [worker.submit(f"r{i}", spec(f"r{i}"), GenerationParams(max_new_tokens=2)) for i in range(2)]
    await until(lambda: worker.running == 2)
    assert worker.capacity == 2  # the session's capacity, below MAX_BATCH
    queued = [worker.submit(f"q{i}", spec(f"q{i}"), GenerationParams(max_new_tokens=2)) for i in range(3)]
    assert worker.queue_depth == 3 and worker.running == 2
    events: dict[str, list[object]] = {}

    async def grab(h: GenerationHandle) -> None:
        events[h.owner] = await collect(h)

    tasks = [asyncio.create_task(grab(h)) for h in [*first, *queued]]
    gen.gate.allow(100)
    await asyncio.gather(*tasks)
    for i, h in enumerate(queued):
        positions = [e for e in events[h.owner] if isinstance(e, Queued)]
        assert positions[0].position == i + 1  # counted beyond the two running rows
        assert [p.position for p in positions] == sorted((p.position for p in positions), reverse=True)
        assert positions[0].eta_seconds == pytest.approx((i + 0.5) * 4 / 2)  # capacity 2 per average duration
        assert Started() in events[h.owner]
    assert all(not any(isinstance(e, Queued) for e in events[h.owner]) for h in first), [
        events[h.owner] for h in first
    ]
    assert gen.session is not None and gen.session.peak == 2
    await worker.shutdown()


async def test_max_batch_one_is_one_at_a_time() -> None:
    gen = ScriptedGenerator(capacity=4)
    worker = GenerationWorker(gen, timeout_s=60, max_batch=1)
    worker.start()
    handles = [worker.submit(f"u{i}", spec(f"u{i}"), GenerationParams(max_new_tokens=2)) for i in range(3)]
    await until(lambda: worker.running == 1)
    assert worker.capacity == 1 and gen.session is None and worker.queue_depth == 2
    gen.gate.allow(100)
    results = await asyncio.gather(*(collect(h) for h in handles))
    assert [text_of(r).split() for r in results] == [[f"u{i}0", f"u{i}1"] for i in range(3)]
    await worker.shutdown()


async def test_pieces_are_held_between_steps_but_first_pieces_and_ends_go_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model thread wakes the loop at most every DELIVERY_INTERVAL_S (here: never, by the clock), except
    for a request's first piece and its end; held pieces arrive in order, before the end."""
    monkeypatch.setattr("core.worker.DELIVERY_INTERVAL_S", 3600.0)
    gen = ScriptedGenerator(capacity=4)
    worker = GenerationWorker(gen, timeout_s=60, max_batch=4)
    worker.start()
    handle = worker.submit("u", spec("w"), GenerationParams(max_new_tokens=5))
    seen: list[object] = []

    async def grab() -> None:
        async for event in handle:
            seen.append(event)

    task = asyncio.create_task(grab())
    pieces = lambda: [e.text for e in seen if isinstance(e, Piece)]  # noqa: E731
    gen.gate.allow(1)
    await until(lambda: pieces() == ["w0 "])  # the first piece was not held back
    gen.gate.allow(3)
    await until(lambda: worker.steps == 4)
    await asyncio.sleep(0.05)
    assert pieces() == ["w0 "]  # steps 2-4 are held: no wake-up of the loop for them
    gen.gate.allow(1)  # the last step ends the request: everything goes, in order
    await task
    assert pieces() == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "] and handle.finish_reason == "length"
    await worker.shutdown()


# --- OPENAI_CONCURRENCY: several streams in flight at once ---------------------------------------------------
class MeetsOthers(ScriptedGenerator):
    """Each stream waits until `n` streams are in flight: only concurrent requests can all finish."""

    def __init__(self, n: int) -> None:
        super().__init__(capacity=n)
        self.barrier = threading.Barrier(n, timeout=10)

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        self.barrier.wait()
        yield f"{spec.question} done"
        return "length"


async def test_threaded_session_runs_streams_concurrently() -> None:
    from core.generators.base import ThreadedSession

    gen = MeetsOthers(3)
    worker = GenerationWorker(gen, timeout_s=60, max_batch=8)
    gen.open_batch = lambda max_batch: ThreadedSession(gen, 3)  # type: ignore[method-assign]  # a test double replaces the method
    worker.start()
    handles = [worker.submit(f"u{i}", spec(f"q{i}"), GenerationParams()) for i in range(3)]
    results = await asyncio.gather(*(collect(h) for h in handles))
    assert [text_of(r) for r in results] == [f"q{i} done" for i in range(3)]
    assert [h.finish_reason for h in handles] == ["length"] * 3  # the stream's return value
    await worker.shutdown()


async def test_openai_backend_sends_requests_concurrently() -> None:
    from pydantic import SecretStr

    from core.generators.base import ThreadedSession
    from core.generators.openai_compat import OpenAIGenerator
    from tests.fakes.openai_server import FakeOpenAIServer, Reply

    with FakeOpenAIServer(api_key="sk-x") as server:
        server.set_reply(Reply("served"))
        gen = OpenAIGenerator(server.base_url, SecretStr("sk-x"), "ghostlm", 4096, timeout=5, concurrency=3)
        session = gen.open_batch(8)
        assert isinstance(session, ThreadedSession) and session.capacity == 3
        session.close()
        worker = GenerationWorker(gen, timeout_s=30, max_batch=8)
        worker.start()
        handles = [worker.submit(f"u{i}", spec(f"q{i}"), GenerationParams()) for i in range(4)]
        results = await asyncio.gather(*(collect(h) for h in handles))
        assert worker.capacity == 3
        assert [text_of(r) for r in results] == ["served"] * 4
        await worker.shutdown()
        gen.close()
