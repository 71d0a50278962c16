"""The README's complete example of the runtime runs and prints what it says."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_runs_as_documented(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### A complete example") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
    # From a folder of its own: an example must not depend on the current folder.
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # The example's comments say what each print shows (structlog's lines,
    # which start with a timestamp, go to the same stdout).
    printed = [line for line in result.stdout.splitlines() if not line[:4].isdigit()]
    assert printed == ["hello", "running 1"]
