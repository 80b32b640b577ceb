"""lifeline.kit: the plumbing every Lifeline service shares."""

import sys

# httpx's package imports its command-line interface (httpx._main: rich and pygments where installed)
# only to export `httpx.main`, which no Lifeline process calls: ~2.5 MB of RSS in every service of a
# development install, where the tests and the benches run (production installs lack rich and
# pygments). Marked absent before httpx is first imported, httpx falls back to the stub it has for
# installs without its `cli` extra; the `httpx` command, a process of its own, is unaffected.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
