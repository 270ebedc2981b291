"""GenerationWorker: streaming off the loop, bounded queue, one pending per user, cancel, timeout, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.generators.base import GenerationParams, PromptSpec
from core.worker import (
    AlreadyPending,
    GenerationHandle,
    GenerationWorker,
    Piece,
    Queued,
    QueueFull,
    Started,
    WorkerClosed,
)
from tests.core.core_doubles import BPEGenerator

SPEC = PromptSpec("sys", (), (), "what is xss?")
PARAMS = GenerationParams(max_new_tokens=16)


async def collect(handle: GenerationHandle) -> list[object]:
    return [event async for event in handle]


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, Piece))


async def test_submit_before_start_is_refused(bpe_generator: BPEGenerator) -> None:
    with pytest.raises(WorkerClosed):
        GenerationWorker(bpe_generator).submit("u", SPEC, PARAMS)


async def test_streams_pieces_in_a_thread(bpe_generator: BPEGenerator) -> None:
    worker = GenerationWorker(bpe_generator, queue_size=4, timeout_s=10)
    worker.start()
    handle = worker.submit("u1", SPEC, PARAMS)
    events = await collect(handle)
    assert isinstance(events[0], Started)
    assert text_of(events).strip() == bpe_generator.answer
    assert handle.finish_reason == "stop"
    assert bpe_generator.threads == {"ghostbot-generation"}
    assert threading.current_thread().name not in bpe_generator.threads
    await worker.shutdown(drain=True, timeout=5)
    await worker.shutdown(drain=True, timeout=5)  # idempotent (the CLI and the composition root both call it)
    assert not bpe_generator.closed  # the composition root owns and closes the generator


async def test_event_loop_keeps_running_while_the_model_runs(bpe_tokenizer) -> None:
    """The model waits, mid-answer, for something only the event loop can do: if the model ran on the loop,
    the loop could not do it and the model would give up (no wall-clock figure involved)."""
    loop_acted = threading.Event()

    class WaitsForTheLoop(BPEGenerator):
        def stream(self, spec, params, should_stop):  # type: ignore[no-untyped-def]
            yield "first "
            self.saw_loop = loop_acted.wait(timeout=10)  # the loop sets it after it has seen "first"
            yield "second"

    gen = WaitsForTheLoop(bpe_tokenizer)
    worker = GenerationWorker(gen, timeout_s=30)
    await worker.start()  # awaitable too
    handle = worker.submit("u1", SPEC, PARAMS)
    pieces = []
    async for event in handle:
        if isinstance(event, Piece):
            pieces.append(event.text)
            loop_acted.set()  # the loop is running while the model is between two tokens
    assert pieces == ["first ", "second"] and gen.saw_loop is True
    await worker.shutdown()


async def test_one_pending_request_per_user(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="x y z", delay_s=0.05)
    worker = GenerationWorker(gen, timeout_s=10)
    worker.start()
    first = worker.submit("alice", SPEC, PARAMS)
    with pytest.raises(AlreadyPending):
        worker.submit("alice", SPEC, PARAMS)
    other = worker.submit("bob", SPEC, PARAMS)  # a different user is fine
    await collect(first)
    await collect(other)
    again = worker.submit("alice", SPEC, PARAMS)  # after the first finished, alice may ask again
    await collect(again)
    assert again.finish_reason == "stop"
    await worker.shutdown()


async def test_full_queue_refuses_immediately_with_eta(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="slow answer", delay_s=0.2)
    worker = GenerationWorker(gen, queue_size=2, timeout_s=10, initial_duration_s=7)
    worker.start()
    running = worker.submit("u0", SPEC, PARAMS)
    await asyncio.sleep(0)  # let the consumer take it
    await asyncio.to_thread(gen.running.wait, 5)
    waiting = [worker.submit(f"u{i}", SPEC, PARAMS) for i in (1, 2)]
    assert worker.queue_depth == 2 and worker.busy
    with pytest.raises(QueueFull) as info:
        worker.submit("u3", SPEC, PARAMS)
    assert info.value.eta_seconds >= 1
    assert not worker.pending("u3")  # nothing half-registered
    await worker.shutdown(drain=False, timeout=5)
    for h in [running, *waiting]:
        await collect(h)
        assert h.finish_reason == "cancelled"


async def test_queue_positions_reported_and_move(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="one two", delay_s=0.05)
    worker = GenerationWorker(gen, queue_size=8, timeout_s=10)
    worker.start()
    handles = [worker.submit(f"u{i}", SPEC, PARAMS) for i in range(4)]
    results = await asyncio.gather(*(collect(h) for h in handles))
    positions = [[e.position for e in events if isinstance(e, Queued)] for events in results]
    # The first may or may not have been taken before the others arrived; the last one waited behind 2-3.
    assert positions[3][:1] in ([3], [4]) and positions[3][-1] == 1
    assert positions[3] == sorted(positions[3], reverse=True)
    for events in results:
        kinds = [type(e) for e in events]
        assert Started in kinds and all(k is Piece for k in kinds[kinds.index(Started) + 1 :])
    await worker.shutdown()


async def test_cancel_waiting_and_running(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 200), delay_s=0.02)
    worker = GenerationWorker(gen, timeout_s=30)
    worker.start()
    running = worker.submit("alice", SPEC, PARAMS)
    waiting = worker.submit("bob", SPEC, PARAMS)
    assert worker.cancel("bob") is True
    assert all(isinstance(e, Queued) for e in await collect(waiting))  # never started
    assert waiting.finish_reason == "cancelled"
    await asyncio.to_thread(gen.running.wait, 5)
    assert worker.cancel("alice") is True
    events = await collect(running)
    assert running.finish_reason == "cancelled"
    assert len(text_of(events).split()) < 200
    assert worker.cancel("alice") is False  # nothing left to cancel
    assert await asyncio.to_thread(_wait_cleared, gen.running, 5)  # the model thread really stopped
    await worker.shutdown()


def _wait_cleared(event: threading.Event, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while event.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not event.is_set()


async def test_timeout_stops_the_request(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 500), delay_s=0.02)
    worker = GenerationWorker(gen, timeout_s=0.2)
    worker.start()
    handle = worker.submit("alice", SPEC, PARAMS)
    await collect(handle)
    assert handle.finish_reason == "timeout"
    assert not worker.pending("alice")
    nxt = worker.submit("bob", SPEC, GenerationParams())
    gen.answer, gen.delay_s = "short", 0.0
    await collect(nxt)
    assert nxt.finish_reason == "stop"
    await worker.shutdown()


async def test_generator_error_is_reported_not_raised(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, fail=True)
    worker = GenerationWorker(gen, timeout_s=5)
    worker.start()
    handle = worker.submit("alice", SPEC, PARAMS)
    await collect(handle)
    assert handle.finish_reason == "error" and isinstance(handle.error, RuntimeError)
    gen.fail = False
    ok = worker.submit("alice", SPEC, PARAMS)  # the worker survives
    await collect(ok)
    assert ok.finish_reason == "stop"
    await worker.shutdown()


async def test_shutdown_drain_finishes_queued_work(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c", delay_s=0.02)
    worker = GenerationWorker(gen, timeout_s=10)
    worker.start()
    handles = [worker.submit(f"u{i}", SPEC, PARAMS) for i in range(3)]
    collectors = [asyncio.create_task(collect(h)) for h in handles]
    await worker.shutdown(drain=True, timeout=10)
    with pytest.raises(WorkerClosed):
        worker.submit("late", SPEC, PARAMS)
    for task, h in zip(collectors, handles):
        assert text_of(await task).split() == ["a", "b", "c"]
        assert h.finish_reason == "stop"


async def test_shutdown_cancel_stops_in_flight(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 1000), delay_s=0.02)
    worker = GenerationWorker(gen, timeout_s=60)
    worker.start()
    running = worker.submit("u0", SPEC, PARAMS)
    queued = worker.submit("u1", SPEC, PARAMS)
    await asyncio.to_thread(gen.running.wait, 5)
    await worker.shutdown(drain=False, timeout=5)
    assert running.finish_reason == "cancelled" and queued.finish_reason == "cancelled"
    assert not gen.running.is_set()  # the thread was joined after the model stopped


async def test_shutdown_drain_timeout_cancels_the_rest(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer=" ".join(["w"] * 1000), delay_s=0.02)
    worker = GenerationWorker(gen, timeout_s=60)
    worker.start()
    running = worker.submit("u0", SPEC, PARAMS)
    await worker.shutdown(drain=True, timeout=0.3)
    assert running.finish_reason == "cancelled"


async def test_shutdown_with_a_model_that_ignores_stop(bpe_tokenizer) -> None:
    gen = BPEGenerator(bpe_tokenizer, answer="a b c d e f g h", delay_s=0.2, ignore_stop=True)
    worker = GenerationWorker(gen, timeout_s=60)
    worker.start()
    handle = worker.submit("u0", SPEC, PARAMS)
    await asyncio.to_thread(gen.running.wait, 5)
    await worker.shutdown(drain=False, timeout=0.3)  # returns although the model thread is still busy
    assert handle.finish_reason == "cancelled"
