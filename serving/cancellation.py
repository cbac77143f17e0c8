"""Stopping a request at the next stage boundary once its deadline has passed.

The gateway answers 504 as soon as a request's deadline passes, but the worker thread doing its
work cannot be interrupted from outside. So the work asks, at every boundary between stages and
inside the long ones (each inference batch, each band of stitched rows, each resize, each band of
rendering), whether it should go on; `Checkpoint.check()` raises `RequestCancelled` once it should
not, and the thread (with its worker place and its memory) is free again within one band's work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class RequestCancelled(Exception):
    """The request's deadline passed; the rest of its work is not done."""


# A check raises RequestCancelled when the work should stop, and returns None otherwise.
Check = Callable[[], None]


def never_cancelled() -> None:
    """The check of work that has no deadline (`sceneparse predict`, `sceneparse test`)."""


class Checkpoint:
    """A check bound to an event that the waiting side sets when the deadline passes.

    `checks` counts the boundaries passed, so tests can see that the work went on no further.
    """

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled
        self.checks = 0

    def __call__(self) -> None:
        self.check()

    def check(self) -> None:
        self.checks += 1
        if self.cancelled.is_set():
            raise RequestCancelled("the request's deadline passed")
