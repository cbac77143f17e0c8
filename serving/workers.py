"""The bounded worker pool: segment work runs on threads, never on the event loop.

At most `workers` requests run at once. Admission is by cost: each request is charged its
estimated working memory (serving/admission.py) against `budget` bytes shared by every admitted
request, running or waiting, and at most `queue_size` may wait. A request that does not fit is
refused at once (the gateway answers 503 with Retry-After), so memory never grows with the load.
A request reserves its place only once its body has been read and its image header checked: a
slow upload holds no place. A request past its deadline is answered 504 by the caller; its job is
cancelled if it has not started, and told to stop (its `cancelled` event is set) if it has; its
place is released when its thread ends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from serving.metrics import GatewayMetrics

T = TypeVar("T")
MIB = 1024 * 1024


class QueueFull(Exception):
    """Every worker is busy and the waiting room is full."""


class DeadlineExceeded(Exception):
    """The request did not finish within its deadline."""


class Reservation:
    """A place in the pool and its cost (bytes), held until the job's thread is done."""

    def __init__(self, pool: WorkerPool, cost: int):
        self._pool = pool
        self.cost = cost
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        """Give the place back (idempotent)."""
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._pool._release(self.cost)


class WorkerPool:
    """Runs `job(cancelled_event)` on a thread pool with admission by cost and a deadline.

    `budget`: bytes of estimated working memory that admitted requests may hold together (None:
    no cost limit, only the count `workers + queue_size`).
    """

    def __init__(self, workers: int, queue_size: int, metrics: GatewayMetrics | None = None,
                 budget: int | None = None):
        self.workers = workers
        self.capacity = workers + queue_size
        self.budget = budget
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segment")
        self._lock = threading.Lock()
        self._admitted = 0  # reserved places: queued + running
        self._admitted_cost = 0
        self._running = 0

    @property
    def admitted(self) -> int:
        with self._lock:
            return self._admitted

    @property
    def admitted_cost(self) -> int:
        with self._lock:
            return self._admitted_cost

    def _publish(self) -> None:  # called with self._lock held
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._admitted - self._running)
            self.metrics.in_progress.set(self._running)
            self.metrics.admitted_cost.set(self._admitted_cost)

    def reserve(self, cost: int = 0) -> Reservation:
        """Take a place charged `cost` bytes, or raise QueueFull at once.

        A request alone in the pool is always admitted (the per-request limit is the caller's).
        """
        with self._lock:
            if self._admitted >= self.capacity:
                raise QueueFull(
                    f"all {self.workers} workers are busy and {self.capacity - self.workers} requests wait"
                )
            if self.budget is not None and self._admitted and self._admitted_cost + cost > self.budget:
                raise QueueFull(
                    f"the admitted requests already hold {self._admitted_cost / MIB:.0f} MiB of the "
                    f"{self.budget / MIB:.0f} MiB cost budget and this one needs {cost / MIB:.0f} MiB"
                )
            self._admitted += 1
            self._admitted_cost += cost
            self._publish()
        return Reservation(self, cost)

    def _release(self, cost: int) -> None:
        with self._lock:
            self._admitted -= 1
            self._admitted_cost -= cost
            self._publish()

    async def run(
        self,
        reservation: Reservation,
        job: Callable[[threading.Event], T],
        timeout: float,
        on_done: Callable[[], None] | None = None,
    ) -> T:
        """Run `job` on a worker within `timeout` seconds.

        `reservation` and then `on_done` are released once the job's thread no longer needs its
        inputs (also when the job is cancelled before it started). Raises DeadlineExceeded after
        `timeout`, or whatever `job` raised.
        """
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

        def finished(_: Future) -> None:
            reservation.release()
            if on_done is not None:
                on_done()

        try:
            future = self._executor.submit(work)
        except RuntimeError:  # the pool is shutting down
            finished(None)  # type: ignore[arg-type]
            raise
        future.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(timeout, 0.0))
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            cancelled.set()
            future.cancel()
            raise DeadlineExceeded("the request took longer than its deadline") from None

    def shutdown(self) -> None:
        """Wait for running jobs to end; jobs not started are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)
