"""What every report says it came from: the commit of the checkout d2lres runs from."""
import shutil
import subprocess
from pathlib import Path

import pytest

import d2lres
from d2lres.util import stamps

ROOT = Path(d2lres.__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_commit_is_the_checkouts():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert stamps.commit().split("+")[0] == head[:12]
