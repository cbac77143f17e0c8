"""The bounded worker pool: segment work runs on threads, never on the event loop.

At most `workers` requests run at once and at most `queue_size` wait; one more is refused at
once (the gateway answers 503 with Retry-After), so memory never grows with the load. A request
past its deadline is answered 504 by the caller; its job is cancelled if it has not started, and
told to stop before its next batch if it has.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from serving.metrics import GatewayMetrics

T = TypeVar("T")


class QueueFull(Exception):
    """Every worker is busy and the waiting room is full."""


class DeadlineExceeded(Exception):
    """The request did not finish within its deadline."""


class WorkerPool:
    """Runs `job(cancelled_event)` on a thread pool with bounded admission and a deadline."""

    def __init__(self, workers: int, queue_size: int, metrics: GatewayMetrics | None = None):
        self.workers = workers
        self.capacity = workers + queue_size
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segment")
        self._lock = threading.Lock()
        self._admitted = 0  # waiting + running, counted until the thread is done with the job
        self._running = 0

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._admitted - self._running

    @property
    def admitted(self) -> int:
        with self._lock:
            return self._admitted

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._admitted - self._running)
            self.metrics.in_progress.set(self._running)

    async def run(
        self, job: Callable[[threading.Event], T], timeout: float, on_done: Callable[[], None] | None = None
    ) -> T:
        """Run `job` on a worker; `on_done` runs once the job's thread no longer needs its inputs.

        Raises QueueFull when no room is left (then `on_done` has already run), DeadlineExceeded
        after `timeout` seconds, or whatever `job` raised.
        """
        with self._lock:
            if self._admitted >= self.capacity:
                full = True
            else:
                full = False
                self._admitted += 1
                self._publish()
        if full:
            if on_done is not None:
                on_done()
            raise QueueFull(f"all {self.workers} workers are busy and {self.capacity - self.workers} requests wait")
        cancelled = threading.Event()

        def work() -> T:
            with self._lock:
                self._running += 1
                self._publish()
            try:
                if cancelled.is_set():
                    raise DeadlineExceeded("the request's deadline passed while it waited")
                return job(cancelled)
            finally:
                with self._lock:
                    self._running -= 1
                    self._publish()

        def finished(_: Future) -> None:  # also runs when the job is cancelled before it started
            with self._lock:
                self._admitted -= 1
                self._publish()
            if on_done is not None:
                on_done()

        future = self._executor.submit(work)
        future.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            cancelled.set()
            future.cancel()
            raise DeadlineExceeded(f"the request took longer than its deadline of {timeout:g} s") from None

    def shutdown(self) -> None:
        """Wait for running jobs to end; jobs not started are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)
