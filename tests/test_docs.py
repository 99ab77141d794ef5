"""Every ```python block in docs/*.md runs, and docs/api.md matches the docstrings.

Blocks of one page run in order in one namespace (later blocks may use earlier names), in a
temporary working directory, offline. A block whose first line is ``# needs: real data`` is
shown for users with the datasets / weights and is not run here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))


def python_blocks(page: Path) -> list[str]:
    return [b for b in BLOCK.findall(page.read_text()) if not b.startswith("# needs: real data")]


def test_docs_have_runnable_examples():
    # every capability page carries at least one runnable example
    for name in (
        "datasets",
        "backbones",
        "store",
        "metrics",
        "evaluation",
        "projections",
        "distinctness",
        "stego",
        "figures",
        "sweep",
        "custom_extractors",
    ):
        assert python_blocks(DOCS / f"{name}.md"), f"docs/{name}.md has no python example"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(python_blocks(page)):
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"docs/{page.name} python block {i} failed: {type(e).__name__}: {e}")


@pytest.mark.slow
def test_api_reference_is_up_to_date():
    out = subprocess.run(
        [sys.executable, str(DOCS / "gen_api.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
