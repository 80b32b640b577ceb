"""Kept for old habits: the sample census is now ``lifeline census`` (lifeline.launcher.census).

uv run python tools/make_sample_sensors.py [--check]   # same as: uv run lifeline census [--check]
"""

from __future__ import annotations

import sys

from lifeline.launcher.census import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
