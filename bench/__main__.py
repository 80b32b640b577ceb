"""``python -m bench [NAME ...] [--quick] [...]``: run the benchmarks (all of them by default).

Exits non-zero as soon as one fails; a failed step is printed, never skipped silently.
"""

from __future__ import annotations

import argparse
import sys

from bench import alerts, assets, ingest

BENCHMARKS = {"ingest": ingest, "assets": assets, "alerts": alerts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    ingest.add_run_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    for name in names:
        rc = BENCHMARKS[name].run_cli(args)
        if rc != 0:
            print(f"benchmark {name} failed (exit {rc})", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
