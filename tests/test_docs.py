"""What the README shows works as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_python_api_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"The Python API:\n\n```python\n(.*?)```", readme, re.S)
    assert example is not None, "README lost its Python API example"
    code = example.group(1)
    assert code.splitlines()[0] == "from farm import Engine, TermGraph, load_rules, transduce_patterns"
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "FARM_CACHE_DIR": str(tmp_path / "cache"),
                              "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("['x', '9'] [")


def test_importing_farm_loads_only_what_is_used() -> None:
    code = ("import sys, farm; assert 'farm.cache.engine' not in sys.modules and 'llvmlite' not in sys.modules; "
            "farm.TermGraph; assert 'farm.lang.terms' in sys.modules and 'farm.cache.engine' not in sys.modules; "
            "print(sorted(farm.__all__))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Engine" in run.stdout
