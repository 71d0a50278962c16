"""The embedding example runs as a program and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_worker_pool_example_runs_and_survives_its_crashes(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker_pool.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary == "30 jobs done, 4 crashes survived, 4 restarts, pool restarts=4"
