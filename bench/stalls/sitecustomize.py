"""Stall probe for the benches' service children (analysis only): ``LIFELINE_BENCH_STALLS=DIR``.

``bench.common.child_env`` puts this directory on a child's ``PYTHONPATH`` when the variable is set, so
Python imports it at start. It writes ``DIR/stalls-<pid>.log``:

- every garbage collection of generation 2, and any collection over 5 ms, with its duration;
- every time the main thread's event loop did not run a callback within 30 ms, how long it was
  blocked, how much of that the main thread spent on a CPU and how much runnable but waiting for one
  (the kernel's schedstat: the machine's share, not ours), and the main thread's Python stack 30 ms
  into the stall (a watchdog thread asks the loop every 50 ms): evaluation, a COMMIT waiting for the
  disk, start-up work, ... (a thread blocked in I/O is neither on a CPU nor waiting for one).

It changes nothing in the process it watches beyond a thread waking every 50 ms.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("LIFELINE_BENCH_STALLS")


def _install(directory: str) -> None:
    import asyncio.base_events
    import gc
    import sys
    import threading
    import time
    import traceback
    from typing import Any

    os.makedirs(directory, exist_ok=True)
    # Open for the process's lifetime, line-buffered: what was written is there even if it is killed.
    out = open(os.path.join(directory, f"stalls-{os.getpid()}.log"), "a", buffering=1)
    out.write(f"{time.strftime('%H:%M:%S')} pid {os.getpid()}: {' '.join(sys.orig_argv)}\n")

    def note(msg: str) -> None:
        out.write(f"{time.strftime('%H:%M:%S')} {time.monotonic():.3f} {msg}\n")

    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if info["generation"] == 2 or ms > 5:
            note(f"gc gen{info['generation']} {ms:.1f} ms, {info['collected']} collected")

    gc.callbacks.append(on_gc)

    loops: list[asyncio.AbstractEventLoop] = []
    main = threading.main_thread()
    # asyncio.run and `lifeline run` (uvloop's loop, which has no Python run_forever to wrap) both make
    # their loop in asyncio.Runner.
    lazy_init = asyncio.Runner._lazy_init  # type: ignore[attr-defined]

    def watched_lazy_init(self: asyncio.Runner) -> None:
        lazy_init(self)
        if threading.current_thread() is main:
            loops.append(self._loop)  # type: ignore[attr-defined]

    asyncio.Runner._lazy_init = watched_lazy_init  # type: ignore[attr-defined]
    schedstat = f"/proc/self/task/{main.native_id}/schedstat"

    def cpu_and_wait_ns() -> tuple[int, int]:
        # The kernel's count for the main thread: time on a CPU, time runnable but waiting for one.
        try:
            with open(schedstat) as f:
                on_cpu, waiting, _ = f.read().split()
            return int(on_cpu), int(waiting)
        except (OSError, ValueError):
            return 0, 0

    def watch() -> None:
        while True:
            time.sleep(0.05)
            if not loops or loops[-1].is_closed():
                continue
            ran = threading.Event()
            cpu0, wait0 = cpu_and_wait_ns()
            t0 = time.perf_counter()
            try:
                loops[-1].call_soon_threadsafe(ran.set)
            except RuntimeError:
                continue
            stack = ""
            while not ran.wait(0.01):
                if not stack and time.perf_counter() - t0 > 0.03:
                    frame = sys._current_frames().get(main.ident or 0)
                    stack = "".join(traceback.format_stack(frame)[-10:]) if frame is not None else "?"
            ms = (time.perf_counter() - t0) * 1000
            if ms > 30:
                cpu1, wait1 = cpu_and_wait_ns()
                note(
                    f"loop blocked {ms:.1f} ms (main thread on a CPU {(cpu1 - cpu0) / 1e6:.1f} ms, waiting for a "
                    f"CPU {(wait1 - wait0) / 1e6:.1f} ms); the main thread 30 ms in:\n{stack}"
                )

    threading.Thread(target=watch, daemon=True, name="bench-stalls").start()


if _DIR:
    _install(_DIR)
