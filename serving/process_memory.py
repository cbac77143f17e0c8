"""Large freed buffers go back to the system at once: glibc's mmap threshold, fixed for the gateway.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned to the
system when it is freed; smaller ones come from heaps, which only shrink from the top, so a freed
block with a live one above it stays resident. The threshold starts at 128 KiB and rises to the
size of every mapped block that is freed, up to 32 MiB: once a process has freed one large
array, everything below 32 MiB comes from heaps (Pillow's 16 MiB blocks of a decoded image,
mid-sized arrays of a large one). bench/memory.py measured what that does to the gateway: a
4096x3072 request left 50 MB more resident behind it and peaked 21% above a 1024x768 one; with the
threshold fixed at 8 MiB, 11% above and nothing left behind, at no measurable cost in latency
(what falls between 8 and 32 MiB is a handful of blocks per request). Fixing the threshold also
stops its adjustment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at `nbytes` for this process; False where there is no glibc mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator as it is
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, int(nbytes)))
    if done:
        log.info("glibc mmap threshold fixed at %d MiB", nbytes // (1024 * 1024))
    return done
