"""scripts/gpu-check.sh on a machine without a GPU: says there is nothing to check, writes its JSON, exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_gpu_check_without_a_gpu_has_nothing_to_check(tmp_path):
    from edgeskd.doctor import probe_driver

    if probe_driver()["ok"]:
        pytest.skip("a GPU is present: the full check takes minutes (run scripts/gpu-check.sh)")
    out = tmp_path / "summary.json"
    p = _run("--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "nothing to check" in p.stdout
    s = json.loads(out.read_text())
    assert s["status"] == "nothing to check" and "no NVIDIA GPU" in s["reason"]


def test_gpu_check_rejects_an_unknown_section(tmp_path):
    p = _run("--out", str(tmp_path / "x.json"), "--only", "bogus")
    assert p.returncode == 2 and "unknown section" in p.stderr
    assert not (tmp_path / "x.json").exists()
