"""Free memory given back to the system once a burst of work is over (glibc's ``malloc_trim``).

A fetch of readings (up to 64 messages of 500 readings), a census chunk or a backlog leaves freed
memory in the C allocator's heap, which glibc keeps for the next allocations: RSS stays at the burst's
high-water mark for good. ``malloc_trim(0)`` returns the free pages (~5 MB after the bench's backlog of
100,000 readings, in under a millisecond). It runs when the consumers have been quiet for a moment after
enough work, or at most every ``every_s`` under steady load, never per message: memory given back is
faulted in again by the next burst.

Kept local to alerts for now; a kit helper may take it over (the storage process has the same need).
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

from lifeline.kit.runtime import TaskPart


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim  # glibc only (not musl, not macOS)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer(TaskPart):
    """Trims the C heap after ``min_messages`` handled messages, once quiet for ``quiet_s`` (or ``every_s``)."""

    task_name = "alerts-heap-trim"

    def __init__(
        self,
        *,
        min_messages: int = 16,
        quiet_s: float = 0.5,
        every_s: float = 10.0,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self.min_messages = min_messages
        self.quiet_s = quiet_s
        self.every_s = every_s
        self._trim = trim if trim is not None else _malloc_trim()
        self._handled = 0
        self._last_note = 0.0
        self._armed = asyncio.Event()
        self.trims = 0

    def note(self, messages: int) -> None:
        """A consumer handled ``messages`` messages."""
        self._handled += messages
        self._last_note = asyncio.get_running_loop().time()
        if self._handled >= self.min_messages and self._trim is not None:
            self._armed.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._armed.wait()
            armed_at = loop.time()
            while True:
                await asyncio.sleep(self.quiet_s)
                now = loop.time()
                if now - self._last_note >= self.quiet_s or now - armed_at >= self.every_s:
                    break
            self._armed.clear()
            self._handled = 0
            if self._trim is not None:
                self._trim()
                self.trims += 1
