"""The README's Python quick start runs as written (on the shipped model, no download)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_quick_start_runs_as_written(tmp_path):
    section = README.read_text().split("## Quick start (Python)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    answer_line, stats_line = run.stdout.strip().splitlines()[-2:]
    assert "-> " in answer_line and "| truth: " in answer_line
    assert "'llm_tokens_kept'" in stats_line
