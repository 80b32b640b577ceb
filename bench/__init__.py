"""Lifeline benchmarks (``make bench`` / ``python -m bench``); see bench/README.md."""

# Before anything imports httpx (bench.common does): lifeline.kit keeps httpx's command line (rich,
# pygments) out of the process. The benches' service children (`python -m bench.<name> serve`) import
# this package first; without it their RSS, the figure measured, carried ~2.3 MB of the bench's own.
import lifeline.kit  # noqa: F401
