"""The generated code in libs/contracts is what `make proto` makes from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "libs" / "contracts" / "src" / "lifeline" / "v1"


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "protogen.py"), "--out", str(tmp_path)], check=True)
    fresh = tmp_path / "lifeline" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in {".py", ".pyi"})
    committed = sorted(p.name for p in GENERATED.iterdir() if p.suffix in {".py", ".pyi"})
    assert names == committed, "run `make proto` and commit the result"
    for name in names:
        assert (fresh / name).read_text() == (GENERATED / name).read_text(), f"{name} is stale: run `make proto`"


def test_layers_and_independence_hold() -> None:
    """contracts <- kit <- services <- launcher, and no service imports another (import-linter)."""
    exe = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
