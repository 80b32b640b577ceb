"""Stopping a background part ends its task even when the task lost a cancellation on the way."""

from __future__ import annotations

import asyncio
import contextlib

from lifeline.kit.runtime import TaskPart
from lifeline.kit.tasks import cancel_and_wait, raise_if_cancelled


class Stubborn(TaskPart):
    """A polling loop whose first cancellation is lost, as Python 3.11's ``asyncio.wait_for`` can lose one
    that arrives just as the awaited reply does (every nats-py request awaits that way)."""

    task_name = "stubborn"

    def __init__(self) -> None:
        self.cancellations = 0
        self.polls = 0

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.cancellations += 1
                if self.cancellations == 1:
                    continue  # lost
                raise
            self.polls += 1


async def test_a_part_that_lost_its_cancellation_still_stops() -> None:
    part = Stubborn()
    task = part.start()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(part.stop(), 5)
    assert task.done() and task.cancelled()
    assert part.cancellations == 2
    polls = part.polls
    await asyncio.sleep(0.05)
    assert part.polls == polls  # nothing runs on after stop


async def test_cancel_and_wait_on_a_task_that_ended_with_an_error_raises_it() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    try:
        await cancel_and_wait(task)
    except ValueError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the task's error was swallowed")


async def test_a_loop_that_checks_ends_with_one_cancel_though_it_was_lost() -> None:
    # What asyncio.run does at exit (and a test loop's teardown): one cancel() per task, then wait.
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            raise_if_cancelled()
            rounds += 1
            with contextlib.suppress(asyncio.CancelledError):  # lost, as in Python 3.11's asyncio.wait_for
                await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()
    ended_at = rounds
    await asyncio.sleep(0.05)
    assert rounds == ended_at
