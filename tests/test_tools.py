"""Every command-line tool imports and parses its arguments (`--help` exits 0 with a usage text)."""

import pathlib
import subprocess
import sys

import pytest

TOOLS = sorted((pathlib.Path(__file__).parents[1] / "tools").glob("*.py"))


@pytest.mark.parametrize("tool", TOOLS, ids=[t.stem for t in TOOLS])
def test_tool_help(tool):
    done = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
