"""Fake gpu-check sections (scripts/gpu_check.py runs each in a process of its own, so they live in an
importable module): one that passes and leaves something in the context, one that hangs after
starting a grandchild, one whose process dies, one that raises, one that skips, one that stops at
its deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_check import Skip


def passes(ctx, deadline):
    ctx["made"] = "by passes"
    return {"status": "passed", "deadline_s": round(deadline.seconds, 1)}


def reads_context(ctx, deadline):
    return {"status": "passed" if ctx.get("made") == "by passes" else "failed", "saw": ctx.get("made")}


def hangs(ctx, deadline):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(os.environ["GPU_CHECK_TEST_PID_FILE"]).write_text(str(child.pid))
    time.sleep(600)
    return {"status": "passed"}


def dies(ctx, deadline):
    print("about to die", flush=True)
    os._exit(3)


def raises(ctx, deadline):
    raise ValueError("a bug in the section")


def skips(ctx, deadline):
    raise Skip("nothing to run it on")


def stops_at_its_deadline(ctx, deadline):
    while True:
        deadline.check("the next step")
        time.sleep(0.05)
