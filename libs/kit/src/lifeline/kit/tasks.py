"""Ending asyncio tasks for sure."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["cancel_and_wait", "raise_if_cancelled"]


async def cancel_and_wait(task: asyncio.Task[object], *, retry_s: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it goes on.

    One ``cancel()`` is not always enough: on Python 3.11 ``asyncio.wait_for`` loses a cancellation
    that arrives as the awaited future completes (gh-86296, fixed in 3.12), and nats-py awaits every
    request that way. A loop that checks the bus several times a second then carries on after its one
    cancellation, and a shutdown that waits for it never ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def raise_if_cancelled() -> None:
    """End the current task if it was cancelled and the cancellation was lost on the way (see above).

    A loop that calls nats-py over and over calls this once per round, so that one ``cancel()`` ends it
    whoever sends it — ``asyncio.run`` cancels each task left at exit once, and waits for it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
