"""Every command-line tool imports and parses its arguments (`--help` exits 0 with a usage text)."""

import json
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


def test_benchmark_json_output_is_one_json_object():
    """`--json` keeps stdout machine-readable: the trainer's parameter table and logs go to stderr."""
    tool = pathlib.Path(__file__).parents[1] / "tools" / "benchmark.py"
    cmd = [sys.executable, str(tool), "--what", "train", "--preset", "tiny", "--reps", "1", "--json"]
    cmd += ["--stage", "stage1_action_injection"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["preset"] == "tiny" and result["remat"] == "attention" and result["step_ms"] > 0
    assert "Total:" in done.stderr  # the parameter overview went to stderr
