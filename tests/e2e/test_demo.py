"""The README's first command works: the demo pushes and pulls through the gateway and says where bytes went."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import free_port

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_pushes_and_pulls_a_sample_image_through_the_gateway() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO), "--size-mib", "24", "--exit", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sha256 matches: True" in done.stdout
    assert "bytes of JSON only" in done.stdout
    assert "apptainer remote add" in done.stdout
