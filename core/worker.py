"""The generation worker: one model, one consumer, a bounded queue, and the model kept off the event loop.

Policy (documented for users and adapters):
- At most `queue_size` requests wait; a submit beyond that raises `QueueFull` at once (with an ETA hint).
- One pending request per owner (user): a second submit while one waits or runs is REFUSED with
  `AlreadyPending`; the user can `/cancel` the first.
- Each request yields events in order: `Queued` (when it waits, and again whenever its position moves),
  `Started`, `Piece`…; when iteration ends `handle.finish_reason` is "stop", "length" (hit max_new_tokens), "cancelled", "timeout" or "error".
- The per-request timeout counts from the moment generation starts (waiting in the queue does not count).
- Cancel and timeout end the request for the caller at once; the model thread stops at its next
  `should_stop` poll, and the next request starts only after it has (there is only one model instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from core.generators.base import GenerationParams, Generator, PromptSpec

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "timeout", "error"]


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
            yield event  # type: ignore[misc]


class _ModelThread:
    """The single thread that touches the model. Jobs arrive on a thread-safe queue."""

    def __init__(
        self,
        generator: Generator,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[GenerationHandle], None],
    ) -> None:
        self._generator = generator
        self._loop = loop
        self._on_done = on_done
        self._jobs: queue.SimpleQueue[tuple[GenerationHandle, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
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

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            handle, fut = job
            reason: FinishReason = "stop"
            error: BaseException | None = None
            try:
                pieces = self._generator.stream(handle.spec, handle.params, handle.stop_event.is_set)
                for piece in pieces:
                    if handle.stop_event.is_set():
                        break
                    if piece:
                        self._call(handle._push, Piece(piece))
                # Backends report why they stopped; only this thread runs the generator, so it is ours.
                if getattr(self._generator, "last_finish_reason", None) == "length":
                    reason = "length"
            except Exception as exc:  # the model's failure is the request's failure, never the worker's
                reason, error = "error", exc
            self._call(self._complete, handle, fut, reason, error)

    def _call(self, fn: object, *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during interpreter shutdown
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]

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


class GenerationWorker:
    """Owns the generator for the process. `start()` inside the running loop, `shutdown()` at the end."""

    def __init__(
        self,
        generator: Generator,
        *,
        queue_size: int = 32,
        timeout_s: float = 120.0,
        initial_duration_s: float = 10.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.generator = generator
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._avg_duration = initial_duration_s  # moving average of finished requests, for ETAs
        self._waiting: deque[GenerationHandle] = deque()
        self._by_owner: dict[str, GenerationHandle] = {}
        self._running: GenerationHandle | None = None
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
        """Requests waiting (not counting the one running)."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def accepting(self) -> bool:
        return not self._closed

    def start(self) -> asyncio.Future[None]:
        """Start the model thread and the consumer (call inside the running loop). Takes effect at once;
        the returned future is already done, so both `worker.start()` and `await worker.start()` work."""
        loop = asyncio.get_running_loop()
        if self._consumer is None and not self._closed:
            self._thread = _ModelThread(self.generator, loop, self._release)
            self._consumer = loop.create_task(self._consume(), name="ghostbot-generation-consumer")
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        return done

    def estimate_wait(self, position: int) -> float:
        """Seconds until a request at `position` (1 = next) starts, from the moving average."""
        running = 0.5 * self._avg_duration if self._running is not None else 0.0
        return running + max(0, position - 1) * self._avg_duration

    def submit(self, owner: str, spec: PromptSpec, params: GenerationParams) -> GenerationHandle:
        """Enqueue a request; never blocks. Raises `WorkerClosed`, `AlreadyPending` or `QueueFull`."""
        if self._closed or self._consumer is None:
            raise WorkerClosed("the assistant is shutting down")
        if owner in self._by_owner:
            raise AlreadyPending(owner)
        if len(self._waiting) >= self.queue_size:
            raise QueueFull(max(1.0, self._avg_duration))
        handle = GenerationHandle(owner, spec, params)
        self._by_owner[owner] = handle
        self._waiting.append(handle)
        self._idle.clear()
        if self._running is not None or len(self._waiting) > 1:
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
            handle._finish("cancelled")  # sets stop_event: the thread stops at its next poll
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
        if not self._waiting and self._running is None:
            self._idle.set()

    def _report_positions(self) -> None:
        for i, handle in enumerate(self._waiting, 1):
            if handle._position != i:
                handle._position = i
                handle._push(Queued(i, self.estimate_wait(i)))

    async def _consume(self) -> None:
        assert self._thread is not None
        while True:
            while not self._waiting:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            handle = self._waiting.popleft()
            self._running = handle
            self._report_positions()
            handle._push(Started())
            started = time.monotonic()
            done = self._thread.submit(handle)
            timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire, handle)
            try:
                await done  # the thread resolves it even after a cancel/timeout, once the model has stopped
            finally:
                timer.cancel()
                self._release(handle)
                self._running = None
                self._update_idle()
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
