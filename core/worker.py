"""The generation worker: one model, one consumer, a bounded queue, and the model kept off the event loop.

Policy (documented for users and adapters):
- At most `queue_size` requests wait; a submit beyond that raises `QueueFull` at once (with an ETA hint).
- One pending request per owner (user): a second submit while one waits or runs is REFUSED with
  `AlreadyPending`; the user can `/cancel` the first.
- Each request yields events in order: `Queued` (when it waits, and again whenever its position moves),
  `Started`, `Piece`…; when iteration ends `handle.finish_reason` is "stop", "length" (hit max_new_tokens), "cancelled", "timeout" or "error".
- The per-request timeout counts from the moment generation starts (waiting in the queue does not count).
- Continuous batching: up to `capacity` requests run together in the ONE model thread (a generator that can
  batch, `max_batch` > 1); a new one joins between steps, a finished one leaves without stalling the others.
  Queue positions and ETAs count only the requests waiting beyond the batch.
- Cancel and timeout end the request for the caller at once; the model thread drops it before its next step
  (or, one at a time, at the stream's next `should_stop` poll), and its slot is reused only after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

from core.generators.base import (
    BatchingGenerator,
    BatchOutput,
    BatchSession,
    FinishReason,
    GenerationParams,
    Generator,
    PromptSpec,
    StreamSession,
)

logger = logging.getLogger(__name__)

DELIVERY_INTERVAL_S = 0.05  # pieces reach the event loop at most this late (first pieces and ends: at once)


class QueueFull(Exception):
    """The queue is full; try again in about `eta_seconds`."""

    def __init__(self, eta_seconds: float) -> None:
        super().__init__(f"generation queue is full; try again in ~{eta_seconds:.0f} s")
        self.eta_seconds = eta_seconds


class AlreadyPending(Exception):
    """This owner already has a request waiting or running."""


class WorkerClosed(Exception):
    """The worker is shutting down and accepts no new requests."""


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next
    eta_seconds: float


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Piece:
    text: str


Event = Queued | Started | Piece
_DONE = object()


class GenerationHandle:
    """One submitted request: iterate it for events; afterwards read `finish_reason` / `error`."""

    def __init__(self, owner: str, spec: PromptSpec, params: GenerationParams) -> None:
        self.owner = owner
        self.spec = spec
        self.params = params
        self.finish_reason: FinishReason | None = None
        self.error: BaseException | None = None
        self.stop_event = threading.Event()  # polled by the model thread through should_stop
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._position = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _push(self, event: Event) -> None:
        if not self.done:
            self._events.put_nowait(event)

    def _finish(self, reason: FinishReason, error: BaseException | None = None) -> bool:
        """First finish wins (a cancel beats the thread's late "stop"). Returns whether this call finished it."""
        if self.done:
            return False
        self.finish_reason = reason
        self.error = error
        self.stop_event.set()
        self._events.put_nowait(_DONE)
        return True

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            if event is _DONE:
                return
            yield event  # type: ignore[misc]  # the queue also carries the _DONE sentinel, handled above


class _ModelThread:
    """The single thread that touches the model. Jobs arrive on a thread-safe queue.

    It drives one :class:`BatchSession`: requests are added between steps, each step advances every running
    request, and a request whose `stop_event` is set (cancel, timeout, shutdown) is removed before the next step
    without stopping the others. With a generator that cannot batch (or `max_batch=1`) the session is a
    :class:`StreamSession`: one request at a time, exactly as before batching.
    """

    def __init__(
        self,
        generator: Generator,
        max_batch: int,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[GenerationHandle], None],
    ) -> None:
        self._generator = generator
        self._max_batch = max_batch
        self._loop = loop
        self._on_done = on_done
        self._jobs: queue.SimpleQueue[tuple[GenerationHandle, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self.capacity: asyncio.Future[int] = loop.create_future()
        self.steps = 0  # batch steps run (for tests and the benchmark)
        # Daemon: a generator that ignores should_stop must not keep the process alive after shutdown.
        self._thread = threading.Thread(target=self._run, name="ghostbot-generation", daemon=True)
        self._thread.start()

    def submit(self, handle: GenerationHandle) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put((handle, fut))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _open(self) -> BatchSession:
        if isinstance(self._generator, BatchingGenerator):
            try:
                return self._generator.open_batch(self._max_batch)
            except Exception as exc:  # e.g. weights missing: every request will report it through stream()
                logger.warning(
                    "batched generation unavailable (%s); serving one at a time", type(exc).__name__
                )
        return StreamSession(self._generator)

    def _run(self) -> None:
        session = self._open()
        self._call(_resolve, self.capacity, max(1, session.capacity))
        active: dict[int, tuple[GenerationHandle, asyncio.Future[None]]] = {}
        # Requests that have not had a piece yet: their first one goes at once.
        waiting_first: set[int] = set()
        held = _Held(self)
        try:
            while True:
                added = self._admit(session, active, held)
                if added is None:
                    return
                waiting_first.update(added)
                for key, (handle, fut) in list(active.items()):
                    if handle.stop_event.is_set():  # cancelled / timed out: leave now, the rest go on
                        session.remove(key)
                        del active[key]
                        waiting_first.discard(key)
                        held.complete(handle, fut, "cancelled", None)
                if not active:
                    continue
                try:
                    outputs = session.step()
                except Exception as exc:  # the model's failure is the requests' failure, never the worker's
                    for key, (handle, fut) in active.items():
                        session.remove(key)
                        held.complete(handle, fut, "error", exc)
                    active.clear()
                    waiting_first.clear()
                    continue
                self.steps += 1
                urgent = False
                for out in outputs:
                    key = cast(int, out.key)  # the key we submitted
                    job = active.get(key)
                    if job is None:
                        continue
                    held.add(job[0], job[1], out)
                    if out.text and key in waiting_first:
                        waiting_first.discard(key)
                        urgent = True
                    if out.finish is not None:
                        del active[key]
                        waiting_first.discard(key)
                        urgent = True
                held.flush(force=urgent)
        finally:
            held.flush(force=True)
            session.close()

    def _admit(
        self,
        session: BatchSession,
        active: dict[int, tuple[GenerationHandle, asyncio.Future[None]]],
        held: _Held,
    ) -> list[int] | None:
        """Take new jobs (wait for one when idle). Returns the keys added, or None on the stop sentinel."""
        added: list[int] = []
        while True:
            try:
                job = self._jobs.get(block=not active)
            except queue.Empty:
                return added
            if job is None:
                for key, (handle, fut) in active.items():
                    session.remove(key)
                    held.complete(handle, fut, "cancelled", None)
                active.clear()
                return None
            handle, fut = job
            key = id(handle)
            try:
                session.add(key, handle.spec, handle.params, handle.stop_event.is_set)
            except Exception as exc:
                held.complete(handle, fut, "error", exc)
                continue
            active[key] = (handle, fut)
            added.append(key)

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during interpreter shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def _deliver(self, news: list[tuple[GenerationHandle, asyncio.Future[None], BatchOutput]]) -> None:
        for handle, fut, out in news:
            if out.text and not handle.stop_event.is_set():
                handle._push(Piece(out.text))
            if out.finish is not None:
                self._complete(handle, fut, out.finish, out.error)

    def _complete(
        self,
        handle: GenerationHandle,
        fut: asyncio.Future[None],
        reason: FinishReason,
        error: BaseException | None,
    ) -> None:
        # Release the owner BEFORE waking the caller, so a follow-up submit is not refused as pending.
        self._on_done(handle)
        handle._finish(reason, error)
        if not fut.done():
            fut.set_result(None)


class _Held:
    """Pieces on their way from the model thread to the event loop, sent in one call every
    ``DELIVERY_INTERVAL_S`` rather than one per step: each wake-up of the loop's thread takes a core from the
    model's threads mid-step (with 2 cores, torch's parallel region then waits for it). A request's first
    piece and every end go at once, so time to first token and completion are not delayed; an end is never
    sent before pieces held for earlier steps (one ordered list)."""

    def __init__(self, thread: _ModelThread) -> None:
        self._thread = thread
        self._news: list[tuple[GenerationHandle, asyncio.Future[None], BatchOutput]] = []
        self._sent = time.monotonic()

    def add(self, handle: GenerationHandle, fut: asyncio.Future[None], out: BatchOutput) -> None:
        self._news.append((handle, fut, out))

    def complete(
        self,
        handle: GenerationHandle,
        fut: asyncio.Future[None],
        reason: FinishReason,
        error: BaseException | None,
    ) -> None:
        self.add(handle, fut, BatchOutput(id(handle), "", reason, error))
        self.flush(force=True)

    def flush(self, *, force: bool) -> None:
        now = time.monotonic()
        if self._news and (force or now - self._sent >= DELIVERY_INTERVAL_S):
            self._thread._call(self._thread._deliver, self._news)
            self._news, self._sent = [], now


def _resolve(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


class GenerationWorker:
    """Owns the generator for the process. `start()` inside the running loop, `shutdown()` at the end.

    `max_batch` > 1 lets a batching generator (see `BatchingGenerator`) run that many requests together in
    the one model thread; the generator may lower it (e.g. a KV-cache memory bound). 1 = one at a time.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        queue_size: int = 32,
        timeout_s: float = 120.0,
        initial_duration_s: float = 10.0,
        max_batch: int = 1,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.generator = generator
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.capacity = max_batch  # requests running at once; the session may lower it once it is open
        self._avg_duration = initial_duration_s  # moving average of finished requests, for ETAs
        self._waiting: deque[GenerationHandle] = deque()
        self._by_owner: dict[str, GenerationHandle] = {}
        self._running: set[GenerationHandle] = set()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._shut_down = False
        self._consumer: asyncio.Task[None] | None = None
        self._thread: _ModelThread | None = None
        self.completed = 0

    # --- public ----------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting beyond the batch (not counting the running ones)."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests being generated now."""
        return len(self._running)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def accepting(self) -> bool:
        return not self._closed

    @property
    def steps(self) -> int:
        """Model steps run so far (one step advances every running request)."""
        return self._thread.steps if self._thread is not None else 0

    def start(self) -> asyncio.Future[None]:
        """Start the model thread and the consumer (call inside the running loop). Takes effect at once;
        the returned future is already done, so both `worker.start()` and `await worker.start()` work."""
        loop = asyncio.get_running_loop()
        if self._consumer is None and not self._closed:
            self._thread = _ModelThread(self.generator, self.max_batch, loop, self._release)
            self._consumer = loop.create_task(self._consume(), name="ghostbot-generation-consumer")
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        return done

    def estimate_wait(self, position: int) -> float:
        """Seconds until a request at `position` (1 = next beyond the batch) starts, from the measured rate:
        `capacity` requests finish per average request duration (each slot frees on average halfway through)."""
        if len(self._running) < self.capacity:
            return 0.0
        return (max(1, position) - 0.5) * self._avg_duration / self.capacity

    def submit(self, owner: str, spec: PromptSpec, params: GenerationParams) -> GenerationHandle:
        """Enqueue a request; never blocks. Raises `WorkerClosed`, `AlreadyPending` or `QueueFull`."""
        if self._closed or self._consumer is None:
            raise WorkerClosed("the assistant is shutting down")
        if owner in self._by_owner:
            raise AlreadyPending(owner)
        if len(self._waiting) >= self.queue_size:
            raise QueueFull(max(1.0, self.estimate_wait(len(self._waiting) + 1)))
        handle = GenerationHandle(owner, spec, params)
        self._by_owner[owner] = handle
        self._waiting.append(handle)
        self._idle.clear()
        self._report_positions()
        self._wakeup.set()
        return handle

    def cancel(self, owner: str) -> bool:
        """Cancel the owner's waiting or running request. Returns whether there was one."""
        handle = self._by_owner.get(owner)
        if handle is None or handle.done:
            return False
        if handle in self._waiting:
            self._waiting.remove(handle)
            self._release(handle)
            handle._finish("cancelled")
            self._report_positions()
            self._update_idle()
        else:
            handle._finish("cancelled")  # sets stop_event: the model thread drops it before its next step
            self._release(handle)
        return True

    def pending(self, owner: str) -> bool:
        return owner in self._by_owner

    async def shutdown(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting; finish (drain) or cancel what is queued and running; stop the thread.
        Safe to call more than once. The generator is not closed: whoever built it owns it."""
        if self._closed and self._shut_down:
            return
        self._closed = True
        if drain:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                logger.warning("generation queue not drained in %.0f s; cancelling the rest", timeout)
        self._cancel_all()
        self._wakeup.set()
        if self._consumer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._consumer), timeout=max(1.0, timeout))
            except TimeoutError:
                logger.warning("the model did not stop in time; abandoning its thread")
                self._consumer.cancel()
        if self._thread is not None:
            self._thread.stop()
            joined = await asyncio.to_thread(self._thread.join, max(1.0, timeout))
            if not joined:
                logger.warning("generation thread still running at shutdown (daemon; exits with the process)")
        self._shut_down = True

    # --- internals -------------------------------------------------------------------------------------
    def _cancel_all(self) -> None:
        for owner in list(self._by_owner):
            self.cancel(owner)

    def _release(self, handle: GenerationHandle) -> None:
        if self._by_owner.get(handle.owner) is handle:
            del self._by_owner[handle.owner]

    def _update_idle(self) -> None:
        if not self._waiting and not self._running:
            self._idle.set()

    def _report_positions(self) -> None:
        if len(self._running) < self.capacity:
            return  # a slot is free: the consumer admits the head of the queue before anyone waits
        for i, handle in enumerate(self._waiting, 1):
            if handle._position != i:
                handle._position = i
                handle._push(Queued(i, self.estimate_wait(i)))

    async def _consume(self) -> None:
        assert self._thread is not None
        thread = self._thread
        capacity = await thread.capacity
        self.capacity = capacity
        if capacity > 1:
            logger.info("generation: up to %d requests decoded together", capacity)
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting or len(self._running) >= capacity:
                if self._closed and not self._waiting and not self._running:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            handle = self._waiting.popleft()
            handle._position = 0
            self._running.add(handle)
            self._report_positions()
            handle._push(Started())
            started = time.monotonic()
            done = thread.submit(handle)
            timer = loop.call_later(self.timeout_s, self._expire, handle)
            # The thread resolves `done` even after a cancel/timeout, once the model has dropped the request.
            done.add_done_callback(functools.partial(self._ended, handle, timer, started))

    def _ended(
        self, handle: GenerationHandle, timer: asyncio.TimerHandle, started: float, _done: object = None
    ) -> None:
        timer.cancel()
        self._release(handle)
        self._running.discard(handle)
        self._update_idle()
        self._wakeup.set()
        if handle.finish_reason in ("stop", "length"):
            elapsed = time.monotonic() - started
            self._avg_duration = 0.7 * self._avg_duration + 0.3 * elapsed
            self.completed += 1
        elif handle.finish_reason == "error":
            # The caller logs the traceback (it knows which secrets to redact); here only the type.
            logger.warning("generation for %s failed: %s", handle.owner, type(handle.error).__name__)

    def _expire(self, handle: GenerationHandle) -> None:
        if handle._finish("timeout"):
            self._release(handle)
            logger.warning("generation for %s timed out after %.0f s", handle.owner, self.timeout_s)
