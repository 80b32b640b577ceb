"""The heap trimmer: the C heap is trimmed once a burst of work is over, never per message."""

from __future__ import annotations

import asyncio

from lifeline.alerts.memory import HeapTrimmer


async def test_trims_once_after_a_burst_once_quiet_and_not_for_a_trickle() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    t = HeapTrimmer(min_messages=10, quiet_s=0.05, every_s=1.0, trim=lambda: calls.append(loop.time()))
    t.start()
    try:
        for _ in range(3):  # a trickle: fewer messages than min_messages
            t.note(2)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert calls == []
        for _ in range(5):  # a burst, then quiet
            t.note(4)
        burst_end = loop.time()
        await asyncio.sleep(0.3)
        assert len(calls) == 1 and calls[0] - burst_end >= 0.05
    finally:
        await t.stop()


async def test_under_steady_load_trims_at_most_every_every_s() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    t = HeapTrimmer(min_messages=1, quiet_s=0.5, every_s=0.2, trim=lambda: calls.append(0.0))
    t.start()
    try:
        start = loop.time()
        for _ in range(60):  # a message every 10 ms: never quiet for 0.5 s
            t.note(1)
            await asyncio.sleep(0.01)
        assert 1 <= len(calls) <= (loop.time() - start) / 0.2 + 1
    finally:
        await t.stop()


def test_the_system_trim_is_found_where_glibc_has_it() -> None:
    # This machine's Python runs on glibc; elsewhere the trimmer is a no-op, not an error.
    assert HeapTrimmer()._trim is not None
