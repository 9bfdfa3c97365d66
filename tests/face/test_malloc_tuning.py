"""The gateway keeps freed stream buffers mapped (server.keep_freed_buffers_mapped): glibc would otherwise trim the
heap each time a queue of 256 KiB pieces is freed and fault the pages back in on the next one. Counted in minor
page faults of a child process (a count, not a time), with and without the tuning, and left alone when the
operator set MALLOC_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHURN = """
import resource, sys
from gateway.face.server import keep_freed_buffers_mapped
tuned = keep_freed_buffers_mapped() if sys.argv[1] == "tune" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(256):
    queue = [bytearray(256 * 1024) for _ in range(4)]  # a streamed answer's queued pieces, then freed
    del queue
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(mode: str, **environ: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env |= {"PYTHONPATH": str(ROOT), **environ}
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_stream_buffers_stop_costing_page_faults() -> None:
    tuned, tuned_faults = churn("tune")
    untouched, default_faults = churn("leave")
    assert tuned and not untouched
    # 256 MiB churned: glibc's defaults fault every page back in (~65k); tuned, only the first queue's (~1k).
    assert default_faults > 20_000
    assert tuned_faults * 10 < default_faults


def test_an_operators_malloc_settings_win() -> None:
    assert not churn("tune", MALLOC_ARENA_MAX="2")[0]
    assert not churn("tune", GLIBC_TUNABLES="glibc.malloc.arena_max=2")[0]
    assert churn("tune", GLIBC_TUNABLES="glibc.rtld.nns=4")[0]  # tunables of other parts do not count
